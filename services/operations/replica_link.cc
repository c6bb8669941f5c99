#include "services/operations/replica_link.h"

#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace musicgw::operations {
namespace {

class PostgresReplicaLink final : public ReplicaLink {
 public:
  explicit PostgresReplicaLink(PostgresListenerOptions options) : options_(std::move(options)) {}
  ~PostgresReplicaLink() override { Stop(); }

  void Start(ChangeFeed* feed, OnNudge on_nudge, OnCancelRequest on_cancel) override {
    PostgresListenerOptions options = options_;
    options.on_nudge = [on_nudge = std::move(on_nudge)](int provider,
                                                        absl::string_view upstream_id) {
      on_nudge(static_cast<musicgw::v1::Provider>(provider), upstream_id);
    };
    options.on_cancel = std::move(on_cancel);
    auto listener = PostgresChangeListener::Start(
        std::move(options),
        [feed](absl::string_view id, int64_t sequence) {
          feed->Publish(Change{std::string(id), sequence, nullptr});
        },
        [feed] { feed->Resync(); });
    absl::MutexLock lock(&mu_);
    listener_ = std::move(listener);
  }

  void Stop() override {
    std::unique_ptr<PostgresChangeListener> listener;
    {
      absl::MutexLock lock(&mu_);
      listener.swap(listener_);
    }
    listener.reset();  // joins the listening thread
  }

 private:
  const PostgresListenerOptions options_;
  absl::Mutex mu_;
  std::unique_ptr<PostgresChangeListener> listener_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::shared_ptr<ReplicaLink> NewPostgresReplicaLink(PostgresListenerOptions options) {
  return std::make_shared<PostgresReplicaLink>(std::move(options));
}

}  // namespace musicgw::operations
