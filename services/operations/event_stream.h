// File: event_stream.h
// A pull-style stream of messages for one gRPC writer (WatchOperation, Download). The transport
// pulls with Next() whenever it may write; a producer never blocks on a slow reader.
#pragma once

#include <optional>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"

namespace musicgw::operations {

template <typename T>
class EventStream {
 public:
  // Destroying the stream ends it (and stops any upstream transfer feeding it). Once the
  // destructor returns, `wake` is not running and will never be called again.
  virtual ~EventStream() = default;
  // Returns the next message if one is ready. When none is: returns nullopt, and if the stream
  // is over sets *finished and *final_status (OK after the last message, or why it ended).
  virtual std::optional<T> Next(bool* finished, absl::Status* final_status) = 0;
  // After Next() returned nullopt without finishing, `wake` is called once, from any thread,
  // when Next() has something new (a message, or the end). Set before the first Next().
  // `wake` is never called with a lock held that Next() takes (the transport calls Next()
  // from inside `wake`).
  virtual void SetWakeup(absl::AnyInvocable<void()> wake) = 0;
};

}  // namespace musicgw::operations
