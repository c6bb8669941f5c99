// File: status_macros.h
// Early-return helpers for absl::Status / absl::StatusOr (Abseil 20220623 has none of its own).
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define MUSICGW_CONCAT_INNER_(a, b) a##b
#define MUSICGW_CONCAT_(a, b) MUSICGW_CONCAT_INNER_(a, b)

// Returns from the current function with `expr`'s status when it is not OK.
#define MUSICGW_RETURN_IF_ERROR(expr)                  \
  do {                                                 \
    ::absl::Status musicgw_status_ = (expr);           \
    if (!musicgw_status_.ok()) return musicgw_status_; \
  } while (0)

// `lhs = value of expr`, or returns expr's status when it is not OK.
#define MUSICGW_ASSIGN_OR_RETURN(lhs, expr) \
  MUSICGW_ASSIGN_OR_RETURN_IMPL_(MUSICGW_CONCAT_(musicgw_statusor_, __LINE__), lhs, expr)
// `lhs` may be a declaration ("auto x"), so it cannot be parenthesized.
// NOLINTBEGIN(bugprone-macro-parentheses)
#define MUSICGW_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                   \
  if (!tmp.ok()) return std::move(tmp).status();       \
  lhs = std::move(tmp).value()
// NOLINTEND(bugprone-macro-parentheses)
