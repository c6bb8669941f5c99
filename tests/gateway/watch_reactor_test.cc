#include "services/gateway/watch_reactor.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "musicgw/v1/musicgw.pb.h"
#include "services/operations/watch_stream.h"
#include "tests/gateway/byte_buffers.h"

namespace musicgw::gateway {
namespace {

namespace v1 = musicgw::v1;
using operations::SharedSnapshot;
using operations::WatchEvent;

// What a typed write of the same event sends.
std::string Typed(const WatchEvent& event) {
  return operations::ToOperationEvent(event).SerializeAsString();
}

std::shared_ptr<const SharedSnapshot> SnapshotOf(const v1::Operation& operation) {
  return std::make_shared<const SharedSnapshot>(std::make_shared<const v1::Operation>(operation));
}

v1::Operation Realistic() {
  v1::Operation op;
  op.set_name("operations/0192d4e5-8f00-7000-8000-000000000001");
  op.set_state(v1::OPERATION_STATE_SUCCEEDED);
  op.set_done(true);
  op.set_sequence(7);
  op.set_provider(v1::PROVIDER_SOUNDPIECE);
  op.set_provider_account("main");
  op.mutable_create_time()->set_seconds(1764500000);
  op.mutable_create_time()->set_nanos(123456789);
  // A body over 127 bytes: the operation's length takes a two-byte varint.
  op.mutable_error()->set_message(std::string(300, 'x'));
  return op;
}

const absl::Time kSent = absl::FromUnixNanos(1764500001987654321);

TEST(EncodeWatchEventTest, AChangeIsByteIdenticalToATypedWrite) {
  for (bool coalesced : {false, true}) {
    const WatchEvent event{v1::OperationEvent::KIND_CHANGE, SnapshotOf(Realistic()), 7, kSent,
                           coalesced};
    EXPECT_EQ(Flatten(EncodeWatchEvent(event)), Typed(event)) << "coalesced=" << coalesced;
  }
  const WatchEvent snapshot{v1::OperationEvent::KIND_SNAPSHOT, SnapshotOf(Realistic()), 1LL << 40,
                            absl::UnixEpoch(), false};
  EXPECT_EQ(Flatten(EncodeWatchEvent(snapshot)), Typed(snapshot));
}

TEST(EncodeWatchEventTest, AHeartbeatIsByteIdenticalToATypedWrite) {
  const WatchEvent heartbeat{v1::OperationEvent::KIND_HEARTBEAT, nullptr, 12, kSent, false};
  EXPECT_EQ(Flatten(EncodeWatchEvent(heartbeat)), Typed(heartbeat));
  const WatchEvent first{v1::OperationEvent::KIND_HEARTBEAT, nullptr, 0, kSent, false};
  EXPECT_EQ(Flatten(EncodeWatchEvent(first)), Typed(first));
}

TEST(EncodeWatchEventTest, AnEmptyOperationIsStillSent) {
  const WatchEvent event{v1::OperationEvent::KIND_CHANGE, SnapshotOf(v1::Operation()), 0, kSent,
                         false};
  const std::string bytes = Flatten(EncodeWatchEvent(event));
  EXPECT_EQ(bytes, Typed(event));
  v1::OperationEvent parsed;
  ASSERT_TRUE(parsed.ParseFromString(bytes));
  EXPECT_TRUE(parsed.has_operation());
}

TEST(EncodeWatchEventTest, EveryWatcherSendsTheSameBytesSharedNotCopied) {
  const auto snapshot = SnapshotOf(Realistic());
  const WatchEvent event{v1::OperationEvent::KIND_CHANGE, snapshot, 7, kSent, false};
  const grpc::ByteBuffer first = EncodeWatchEvent(event);
  const grpc::ByteBuffer second = EncodeWatchEvent(event);
  EXPECT_EQ(Flatten(first), Flatten(second));

  // Both buffers point at the snapshot's one serialization.
  const std::string& shared = snapshot->Encoded();
  for (const grpc::ByteBuffer* buffer : {&first, &second}) {
    std::vector<grpc::Slice> slices;
    ASSERT_TRUE(buffer->Dump(&slices).ok());
    bool points_at_shared = false;
    for (const auto& slice : slices) {
      points_at_shared =
          points_at_shared || reinterpret_cast<const char*>(slice.begin()) == shared.data();
    }
    EXPECT_TRUE(points_at_shared);
  }
}

TEST(EncodeWatchEventTest, TheBytesOutliveTheEventThatSentThem) {
  grpc::ByteBuffer buffer;
  std::string expected;
  {
    const WatchEvent event{v1::OperationEvent::KIND_CHANGE, SnapshotOf(Realistic()), 7, kSent,
                           false};
    expected = Typed(event);
    buffer = EncodeWatchEvent(event);
  }  // the last reference to the snapshot outside the buffer is gone
  EXPECT_EQ(Flatten(buffer), expected);
}

TEST(SharedSnapshotTest, IsAnnotatedOnceByTheFirstEncoder) {
  const auto snapshot = SnapshotOf(Realistic());
  int calls = 0;
  const std::string& annotated = snapshot->Encoded([&](v1::Operation* operation) {
    ++calls;
    operation->mutable_estimated_done_time()->set_seconds(42);
  });
  const std::string& again = snapshot->Encoded([&](v1::Operation*) { ++calls; });
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(&annotated, &again);
  EXPECT_EQ(&snapshot->Encoded(), &annotated);
  v1::Operation parsed;
  ASSERT_TRUE(parsed.ParseFromString(annotated));
  EXPECT_EQ(parsed.estimated_done_time().seconds(), 42);
  EXPECT_FALSE(snapshot->operation().has_estimated_done_time()) << "the shared state is kept";
}

}  // namespace
}  // namespace musicgw::gateway
