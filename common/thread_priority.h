// File: thread_priority.h
// CPU priority of the calling thread. Work that no caller is waiting on at that moment
// (tracking, custody copies, provider I/O, webhook delivery) runs below the threads
// that answer RPCs, so under contention a tenant's reads are not queued behind another tenant's
// accepted operations.
#pragma once

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace musicgw {

// Sets the calling thread's nice value (Linux: per thread). Raising it needs no privilege;
// lowering it below the process's may be refused (PERMISSION_DENIED). 0 leaves it unchanged.
absl::Status SetCurrentThreadNice(int nice);

// SetCurrentThreadNice for a background thread: a refusal is logged as a warning naming `who`
// (the thread then keeps the process's priority, which is safe, only less fair).
void LowerCurrentThreadPriorityOrWarn(int nice, absl::string_view who);

// The calling thread's nice value.
int CurrentThreadNice();

}  // namespace musicgw
