#include "services/operations/change_feed.h"

#include <algorithm>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace musicgw::operations {
namespace {

class InProcessChangeFeed final : public ChangeFeed {
 public:
  void Publish(const Change& change) override {
    // A reader lock: publishers of different operations fan out in parallel, and Unsubscribe
    // (a writer) waits for calls in progress.
    absl::ReaderMutexLock lock(&mu_);
    for (ChangeSubscriber* subscriber : subscribers_) subscriber->OnChange(change);
  }

  void Resync() override {
    absl::ReaderMutexLock lock(&mu_);
    for (ChangeSubscriber* subscriber : subscribers_) subscriber->OnResync();
  }

  void Subscribe(ChangeSubscriber* subscriber) override {
    absl::MutexLock lock(&mu_);
    subscribers_.push_back(subscriber);
  }

  void Unsubscribe(ChangeSubscriber* subscriber) override {
    absl::MutexLock lock(&mu_);
    subscribers_.erase(std::remove(subscribers_.begin(), subscribers_.end(), subscriber),
                       subscribers_.end());
  }

 private:
  absl::Mutex mu_;
  std::vector<ChangeSubscriber*> subscribers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::unique_ptr<ChangeFeed> NewInProcessChangeFeed() {
  return std::make_unique<InProcessChangeFeed>();
}

}  // namespace musicgw::operations
