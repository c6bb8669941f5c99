// FUZZ_CHECK: a property every input must keep; a violation aborts, so libFuzzer keeps the
// input as a crash artifact (assert() would vanish from an NDEBUG build).
#pragma once

#include <cstdio>
#include <cstdlib>

#define FUZZ_CHECK(condition, what)                                                       \
  do {                                                                                    \
    if (!(condition)) {                                                                   \
      std::fprintf(stderr, "fuzz check failed at %s:%d: %s\n", __FILE__, __LINE__, what); \
      std::abort();                                                                       \
    }                                                                                     \
  } while (false)
