// Turning a run-time block size into a template argument, for the kernels' register blocks
// (whose sizes must be compile-time constants for their accumulators to stay in registers).
#pragma once

#include <type_traits>
#include <utility>

namespace dsv4::kernels::detail {

// f(std::integral_constant<int, k>{}) with k = n for 1 ≤ n ≤ N, k = N for n > N, k = 1 for
// n < 1.
template <int N, typename F>
inline decltype(auto) with_block_size(int n, F&& f) {
  static_assert(N >= 1);
  if constexpr (N == 1) {
    return std::forward<F>(f)(std::integral_constant<int, 1>{});
  } else {
    if (n >= N) return std::forward<F>(f)(std::integral_constant<int, N>{});
    return with_block_size<N - 1>(n, std::forward<F>(f));
  }
}

}  // namespace dsv4::kernels::detail
