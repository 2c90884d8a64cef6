// Environment variables of the CPU side (PVTV2_FAST_CPU_ISA, PVTV2_FAST_FFN_BAND_KB, PVTV2_FAST_FFN_WHOLE_KB,
// PVTV2_FAST_CPU_CACHE_MB), parsed strictly: a value that is set but not understood raises an error naming the
// variable, the value and what is accepted; it is never silently replaced by the default. Set to the empty string
// counts as unset (how shells clear a variable: VAR=).
#pragma once

#include <c10/util/Exception.h>
#include <stdint.h>

#include <cstdlib>
#include <initializer_list>
#include <string>

namespace pvtv2 {
namespace env {

// The variable's value, or nullptr when it is unset or empty.
inline const char* get(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? value : nullptr;
}

// A whole number in [lo, hi] in plain decimal digits ("512"; not "-1", "+8", " 8", "abc", "64kb", "1e3"), or
// `unset` when the variable is unset. `accepted` describes the range and unit for the error message, and
// `unset_means` what leaving it unset does (default: the value `unset`).
inline int64_t integer(const char* name, int64_t lo, int64_t hi, int64_t unset, const char* accepted,
                       const char* unset_means = nullptr) {
  const char* value = get(name);
  if (value == nullptr) return unset;
  const std::string s(value);
  bool ok = s.size() <= 18 && s.find_first_not_of("0123456789") == std::string::npos;  // 18 digits: no int64 overflow
  const int64_t v = ok ? std::stoll(s) : 0;
  ok = ok && v >= lo && v <= hi;
  TORCH_CHECK(ok, name, " must be ", accepted, " (", lo, " to ", hi, "; unset: ",
              unset_means != nullptr ? std::string(unset_means) : std::to_string(unset), "), got '", s, "'");
  return v;
}

// The index of the variable's value in `choices` (exact, case-sensitive match), or `unset` when it is unset.
inline int choice(const char* name, std::initializer_list<const char*> choices, int unset, const char* unset_means) {
  const char* value = get(name);
  if (value == nullptr) return unset;
  std::string accepted;
  int i = 0;
  for (const char* c : choices) {
    if (std::string(value) == c) return i;
    accepted += (i++ ? ", " : "") + std::string(c);
  }
  TORCH_CHECK(false, name, " must be one of ", accepted, " (unset: ", unset_means, "), got '", value, "'");
  return unset;  // unreachable: TORCH_CHECK(false) throws
}

}  // namespace env
}  // namespace pvtv2
