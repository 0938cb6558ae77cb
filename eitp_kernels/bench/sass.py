"""SASS as data: the instructions of each function and its hot loops.

The reading half of the static cost model (:mod:`eitp_kernels.bench.cost_model`,
docs/design.md §7): ``parse_sass`` turns ``cuobjdump -sass`` / ``nvdisasm``
text into instructions per function, ``hot_loops`` finds the innermost loops
that read global memory (a loop whose exit depends on the data it loads, a
search, is not one) and counts, per thread and iteration, instructions, load
and store bytes, load widths, bytes in flight, atomics, barriers, votes, fp64
instructions and calls. What those counts cost on a given GPU is the model's.
"""
from __future__ import annotations

import dataclasses
import re


# --------------------------------------------------------------------------
# SASS
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Instr:
    address: int
    predicate: str
    opcode: str  # with modifiers, e.g. LDG.E.128.CONSTANT
    operands: tuple

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]


_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_FUNCTION = re.compile(r"Function\s*:\s*(\S+)")


def parse_sass(text: str) -> dict[str, list[Instr]]:
    """{function name: instructions} from ``cuobjdump -sass`` output (one architecture)."""
    functions: dict[str, list[Instr]] = {}
    current = None
    for line in text.splitlines():
        m = _FUNCTION.search(line)
        if m:
            current = functions.setdefault(m.group(1), [])
            continue
        m = _LINE.search(line)
        if m and current is not None:
            operands = tuple(o.strip() for o in _split_operands(m.group(4)) if o.strip())
            current.append(Instr(int(m.group(1), 16), (m.group(2) or "").strip(), m.group(3), operands))
    return functions


def _split_operands(text: str) -> list[str]:
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return out


_REG = re.compile(r"(?<![\w.])-?\|?(R\d+)(\.64)?")
_PRED = re.compile(r"(?<![\w.])!?(U?P[0-6])\b")


def _registers(operand: str, wide: int = 1) -> set[str]:
    regs = set()
    for m in _REG.finditer(operand):
        n = int(m.group(1)[1:])
        count = 2 if m.group(2) else wide
        regs |= {f"R{n + k}" for k in range(count)}
    return regs


def _load_width(ins: Instr) -> int:
    """Bytes one global load of ``ins`` reads per thread."""
    mods = ins.opcode.split(".")[1:]
    if "128" in mods:
        return 16
    if "64" in mods:
        return 8
    if any(m in mods for m in ("U16", "S16")):
        return 2
    if any(m in mods for m in ("U8", "S8")):
        return 1
    return 4


_SETP = ("ISETP", "FSETP", "DSETP", "HSETP2", "PSETP", "PLOP3", "FCHK", "VOTEU")
_PLAIN_PRED = re.compile(r"U?P[0-6T]")


def _split_destinations(ins: Instr) -> tuple[list[str], list[str]]:
    """(destination operands, source operands) of an instruction."""
    ops = list(ins.operands)
    if not ops or ops[0].startswith(("[", "desc[")) or ins.base in _NO_DESTINATION:
        return [], ops
    if ins.base in _SETP:  # one or two predicates first (ISETP P0, PT, ...), then sources
        n = 2 if len(ops) > 1 and _PLAIN_PRED.fullmatch(ops[0]) and _PLAIN_PRED.fullmatch(ops[1]) else 1
        return ops[:n], ops[n:]
    if _PLAIN_PRED.fullmatch(ops[0]) and len(ops) > 1:  # LOP3.LUT P0, R7, ...: a predicate and a register
        return ops[:2], ops[2:]
    n = 1  # the register, then its carry-out predicates (IADD3 R21, P0, P1, ...)
    while n < len(ops) and _PLAIN_PRED.fullmatch(ops[n]):
        n += 1
    return ops[:n], ops[n:]


_NO_DESTINATION = {"STG", "STS", "ST", "STL", "RED", "REDG", "BRA", "EXIT", "BAR", "CALL", "RET", "BSSY", "BSYNC", "WARPSYNC",
                   "MEMBAR", "DEPBAR", "NOP", "BPT", "YIELD", "ERRBAR", "CCTL", "REDUX", "BREAK", "BMOV"}


def _operand_names(operand: str, wide: int = 1) -> set[str]:
    names = _registers(operand, wide)
    names |= {m.group(1) for m in _PRED.finditer(operand)}
    return names


def _destinations(ins: Instr) -> set[str]:
    dests, _ = _split_destinations(ins)
    wide = 1
    if ins.base in ("LDG", "LD", "LDS", "LDC", "ATOMG", "ATOM", "ATOMS", "LDSM"):
        wide = max(1, _load_width(ins) // 4)
    elif ".WIDE" in ins.opcode or ".64" in ins.opcode or ins.base.startswith("D") or "F64" in ins.opcode:
        wide = 2
    names = set()
    for operand in dests:
        names |= _operand_names(operand, wide)
    return names


def _sources(ins: Instr) -> set[str]:
    _, sources = _split_destinations(ins)
    names = set()
    for operand in sources:
        names |= _operand_names(operand, 2 if ins.base.startswith("D") else 1)
    if ins.predicate:
        names.add(ins.predicate.lstrip("@!"))
    return names


def _branch_target(ins: Instr) -> int | None:
    if ins.base != "BRA" or not ins.operands:
        return None
    m = re.search(r"0x([0-9a-f]+)", ins.operands[-1])
    return int(m.group(1), 16) if m else None


# --------------------------------------------------------------------------
# Hot loops
# --------------------------------------------------------------------------

_FP64 = re.compile(r"^(DADD|DMUL|DFMA|DSETP|DMNMX|DSET|DMMA)\b|^(F2F|I2F|F2I|FRND)\.[\w.]*F64|^MUFU\.(RCP|RSQ)64")


@dataclasses.dataclass
class Loop:
    """One hot loop, per thread and iteration."""
    start: int
    end: int
    instructions: int
    loaded: int  # global load bytes
    stored: int  # global store bytes
    load_widths: dict  # bytes -> count
    in_flight: int  # most load bytes issued and not yet used
    atomics: int
    barriers: int
    votes: int
    fp64: int
    calls: int
    whole_kernel: bool = False


def _innermost_loops(code: list[Instr]) -> list[tuple[int, int]]:
    """(first, last) instruction indices of every innermost loop (a backward branch and its body)."""
    index = {ins.address: i for i, ins in enumerate(code)}
    loops = []
    for i, ins in enumerate(code):
        target = _branch_target(ins)
        if target is not None and target <= ins.address and target in index:
            loops.append((index[target], i))
    return [(a, b) for a, b in loops if not any((c, d) != (a, b) and a <= c and d <= b for c, d in loops)]


def _is_global_load(ins: Instr) -> bool:
    return ins.base in ("LDG", "LD") and not ins.opcode.startswith("LDGSTS")


def _is_global_store(ins: Instr) -> bool:
    return ins.base in ("STG", "ST")


def _data_dependent_exit(body: list[Instr]) -> bool:
    """Does the loop's backward branch depend on a value it loads (a search, not a walk over elements)?"""
    tainted: set[str] = set()
    for _ in range(2):
        for ins in body:
            if _is_global_load(ins) or _sources(ins) & tainted:
                tainted |= _destinations(ins)
            elif not ins.predicate:
                tainted -= _destinations(ins)
    last = body[-1]
    return bool(last.predicate and last.predicate.lstrip("@!") in tainted)


def _in_flight(body: list[Instr]) -> int:
    """The most global-load bytes issued and not yet used, over two passes of the body."""
    pending: dict[str, tuple[int, int]] = {}  # register -> (load id, bytes)
    best = 0
    load_id = 0
    for rep in range(2):
        for ins in body:
            used = _sources(ins)
            done = {pending[r][0] for r in used if r in pending}
            if done:
                pending = {r: v for r, v in pending.items() if v[0] not in done}
            if _is_global_load(ins):
                load_id += 1
                width = _load_width(ins)
                regs = _destinations(ins) or {f"load{load_id}"}
                for reg in regs:
                    pending[reg] = (load_id, width)
            else:
                for reg in _destinations(ins):
                    pending.pop(reg, None)
            if rep == 1:
                best = max(best, sum({lid: w for lid, w in pending.values()}.values()))
    return best


def _is_outside_call(ins: Instr, start: int, end: int) -> bool:
    """A call to a subroutine (the division's slow path); sm_8x also 'calls' the next instruction to leave
    a loop (CALL.REL.NOINC to end + 16), which is not one."""
    if ins.base != "CALL":
        return False
    m = re.search(r"0x([0-9a-f]+)", ins.operands[-1]) if ins.operands else None
    return not (m and start <= int(m.group(1), 16) <= end + 16)


def _loop_stats(body: list[Instr], start: int, end: int, whole_kernel: bool = False) -> Loop:
    widths: dict = {}
    loaded = stored = 0
    for ins in body:
        if _is_global_load(ins):
            w = _load_width(ins)
            loaded += w
            widths[w] = widths.get(w, 0) + 1
        elif _is_global_store(ins):
            stored += _load_width(ins)
    return Loop(
        start=start, end=end, instructions=len(body), loaded=loaded, stored=stored, load_widths=widths,
        in_flight=_in_flight(body),
        atomics=sum(ins.base in ("ATOM", "ATOMG", "ATOMS", "RED", "REDG") for ins in body),
        barriers=sum(ins.base == "BAR" for ins in body),
        votes=sum(ins.base in ("VOTE", "VOTEU", "MATCH") for ins in body),
        fp64=sum(bool(_FP64.match(ins.opcode)) for ins in body),
        calls=sum(_is_outside_call(ins, start, end) for ins in body),
        whole_kernel=whole_kernel,
    )


def hot_loops(code: list[Instr]) -> list[Loop]:
    """The hot loops of one function: innermost loops that read global memory with a data-independent trip
    count; without any, the whole body as one iteration if it reads global memory."""
    loops = []
    for a, b in _innermost_loops(code):
        body = code[a:b + 1]
        if any(_is_global_load(ins) for ins in body) and not _data_dependent_exit(body):
            loops.append(_loop_stats(body, code[a].address, code[b].address))
    if not loops and any(_is_global_load(ins) for ins in code):
        body = [ins for ins in code if not (ins.base == "BRA" and _branch_target(ins) == ins.address)]
        loops.append(_loop_stats(body, code[0].address, code[-1].address, whole_kernel=True))
    return loops
