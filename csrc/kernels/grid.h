// Launch-size checks for the CUDA launchers (host code, plain C++: no CUDA or
// torch headers, so tests/test_float_order.py checks it with g++).
//
// CUDA takes gridDim.x up to 2^31 - 1 and gridDim.y / gridDim.z up to 65535;
// a block count cast to `unsigned` past those limits would launch a wrong (or
// no) grid. Launchers pass every block count through grid_x / grid_yz, which
// throw a clear error instead (the bindings turn it into a Python exception).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace eitp {

constexpr int64_t kMaxGridX = 2147483647;  // 2^31 - 1
constexpr int64_t kMaxGridYZ = 65535;

inline unsigned checked_grid(int64_t blocks, int64_t limit, const char* axis, const char* who) {
  if (blocks < 0 || blocks > limit)
    throw std::invalid_argument(std::string(who) + ": " + std::to_string(blocks) + " blocks on grid axis " + axis +
                                ", CUDA allows at most " + std::to_string(limit) +
                                " (the input is too large for one launch)");
  return static_cast<unsigned>(blocks);
}
inline unsigned grid_x(int64_t blocks, const char* who) { return checked_grid(blocks, kMaxGridX, "x", who); }
inline unsigned grid_yz(int64_t blocks, const char* who) { return checked_grid(blocks, kMaxGridYZ, "y", who); }

}  // namespace eitp
