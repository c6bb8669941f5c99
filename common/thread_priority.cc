#include "common/thread_priority.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace musicgw {
namespace {

// setpriority(PRIO_PROCESS, tid) sets one thread's nice on Linux, not the process's.
id_t CurrentThreadId() { return static_cast<id_t>(syscall(SYS_gettid)); }

}  // namespace

void LowerCurrentThreadPriorityOrWarn(int nice, absl::string_view who) {
  if (absl::Status lowered = SetCurrentThreadNice(nice); !lowered.ok()) {
    log::Warning(absl::StrCat(who, " keeps the process's priority"),
                 {{"error", std::string(lowered.message())}});
  }
}

absl::Status SetCurrentThreadNice(int nice) {
  if (nice == 0) return absl::OkStatus();
  if (setpriority(PRIO_PROCESS, CurrentThreadId(), nice) == 0) return absl::OkStatus();
  const int error = errno;
  const std::string message =
      absl::StrCat("cannot set the thread's nice to ", nice, ": ", std::strerror(error));
  return error == EACCES || error == EPERM ? absl::PermissionDeniedError(message)
                                           : absl::InvalidArgumentError(message);
}

int CurrentThreadNice() {
  errno = 0;
  return getpriority(PRIO_PROCESS, CurrentThreadId());
}

}  // namespace musicgw
