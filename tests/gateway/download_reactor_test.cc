// The Download messages framed by hand from custody are, byte for byte, what the typed path
// (CustodyStream::Next and DownloadChunk's serialization) sends.
#include "services/gateway/download_reactor.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "services/operations/asset_store.h"
#include "tests/gateway/byte_buffers.h"
#include "tests/scratch_dir.h"

namespace musicgw::gateway {
namespace {

namespace v1 = musicgw::v1;
using operations::AssetStore;
using operations::CustodyStream;

// `size` bytes that differ from one offset to the next.
std::string Pattern(int64_t size) {
  std::string bytes(static_cast<size_t>(size), '\0');
  for (int64_t i = 0; i < size; ++i) bytes[i] = static_cast<char>((i * 131 + i / 251) & 0xff);
  return bytes;
}

class DownloadFramingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = operations::OpenDirectoryAssetStore(NewTestScratchDir("framing"));
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }

  // Stores `bytes`; returns the digest.
  std::string Put(const std::string& bytes) {
    auto writer = store_->NewWriter();
    EXPECT_TRUE(writer.ok()) << writer.status();
    EXPECT_TRUE((*writer)->Append(bytes).ok());
    auto stored = (*writer)->Commit();
    EXPECT_TRUE(stored.ok()) << stored.status();
    return stored->sha256;
  }

  std::unique_ptr<CustodyStream> Open(const std::string& sha256, int64_t offset, int chunk_bytes) {
    auto reader = store_->Open(sha256);
    EXPECT_TRUE(reader.ok()) << reader.status();
    v1::Asset asset;
    asset.set_name("operations/01j00000000000000000000000/assets/0");
    asset.set_content_type("audio/flac");
    asset.set_format(v1::AUDIO_FORMAT_FLAC);
    return std::make_unique<CustodyStream>(asset, std::move(*reader), sha256, offset, chunk_bytes,
                                           nullptr);
  }

  // Every message both ways; checks they match and returns the data the raw path sent.
  std::string ExpectSameMessages(const std::string& bytes, int64_t offset, int chunk_bytes) {
    SCOPED_TRACE(absl::StrCat("size ", bytes.size(), " offset ", offset, " chunk ", chunk_bytes));
    const std::string sha256 = Put(bytes);
    auto typed = Open(sha256, offset, chunk_bytes);
    auto raw = Open(sha256, offset, chunk_bytes);

    std::vector<v1::DownloadChunk> expected;
    bool finished = false;
    absl::Status status;
    while (auto next = typed->Next(&finished, &status)) expected.push_back(std::move(*next));
    EXPECT_TRUE(finished);
    EXPECT_TRUE(status.ok()) << status;

    std::vector<std::string> sent;
    auto info = SerializeChunk(raw->InfoChunk());
    EXPECT_TRUE(info.ok()) << info.status();
    sent.push_back(Flatten(*info));
    while (true) {
      auto chunk = ReadCustodyChunk(*raw);
      EXPECT_TRUE(chunk.ok()) << chunk.status();
      if (!chunk.ok() || !chunk->has_value()) break;
      sent.push_back(Flatten(**chunk));
    }

    std::string data;
    EXPECT_EQ(sent.size(), expected.size());
    for (size_t i = 0; i < sent.size() && i < expected.size(); ++i) {
      SCOPED_TRACE(absl::StrCat("message ", i));
      EXPECT_EQ(sent[i], expected[i].SerializeAsString());
      v1::DownloadChunk parsed;
      EXPECT_TRUE(parsed.ParseFromString(sent[i]));
      EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(parsed, expected[i]))
          << parsed.ShortDebugString();
      if (i == 0) {
        EXPECT_TRUE(parsed.has_info());
        EXPECT_EQ(parsed.info().offset(), offset);
        EXPECT_EQ(parsed.info().size_bytes(), static_cast<int64_t>(bytes.size()));
        EXPECT_EQ(parsed.info().sha256(), sha256);
        EXPECT_TRUE(parsed.info().in_custody());
        continue;
      }
      EXPECT_EQ(parsed.payload_case(), v1::DownloadChunk::kData);
      EXPECT_EQ(parsed.offset(), offset + static_cast<int64_t>(data.size()));
      EXPECT_FALSE(parsed.data().empty());
      EXPECT_LE(parsed.data().size(), static_cast<size_t>(chunk_bytes));
      data += parsed.data();
    }
    EXPECT_EQ(data, bytes.substr(static_cast<size_t>(offset)));
    return data;
  }

  std::unique_ptr<AssetStore> store_;
};

TEST_F(DownloadFramingTest, EmptyAssetIsTheInfoAlone) { ExpectSameMessages("", 0, 4096); }

TEST_F(DownloadFramingTest, OneByteAtOffsetZeroAndAtItsEnd) {
  ExpectSameMessages("x", 0, 4096);
  ExpectSameMessages("x", 1, 4096);
}

TEST_F(DownloadFramingTest, ExactMultipleOfTheChunk) {
  const std::string bytes = Pattern(3 * 4096);
  ExpectSameMessages(bytes, 0, 4096);
  ExpectSameMessages(bytes, 4096, 4096);  // from a chunk boundary
  ExpectSameMessages(bytes, 1, 4096);     // every chunk straddles a boundary, last one short
  ExpectSameMessages(bytes, 3 * 4096 - 1, 4096);
}

TEST_F(DownloadFramingTest, PartialLastChunk) {
  const std::string bytes = Pattern(3 * 4096 + 17);
  ExpectSameMessages(bytes, 0, 4096);
  ExpectSameMessages(bytes, 5000, 4096);
  ExpectSameMessages(bytes, 3 * 4096, 4096);
}

TEST_F(DownloadFramingTest, FullSizeChunksWithMultiByteLengthsAndOffsets) {
  // 1 MiB chunks: a three-byte length; offsets past 2^21 need four varint bytes.
  const std::string bytes = Pattern(3 * 1024 * 1024 + 333);
  ExpectSameMessages(bytes, 0, 1024 * 1024);
  ExpectSameMessages(bytes, 300, 1024 * 1024);
}

TEST_F(DownloadFramingTest, PrefixAndSuffixMatchTheSerializationAtLargeValues) {
  for (int64_t offset : {int64_t{0}, int64_t{1}, int64_t{127}, int64_t{128}, int64_t{1} << 32,
                         (int64_t{1} << 62) + 5}) {
    for (const std::string& data : {std::string(), std::string("a"), std::string(300, 'b')}) {
      v1::DownloadChunk chunk;
      chunk.set_data(data);
      chunk.set_offset(offset);
      EXPECT_EQ(DataChunkPrefix(static_cast<int64_t>(data.size())) + data + DataChunkSuffix(offset),
                chunk.SerializeAsString())
          << "offset " << offset << " size " << data.size();
    }
  }
}

}  // namespace
}  // namespace musicgw::gateway
