// File: byte_buffers.h
// Gateway test helpers for the raw (ByteBuffer) methods: the bytes a buffer holds, and a buffer
// holding given bytes.
#pragma once

#include <string>
#include <vector>

#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "gtest/gtest.h"

namespace musicgw::gateway {

// The bytes of `buffer`, its slices joined.
inline std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string out;
  for (const auto& slice : slices) {
    out.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return out;
}

// A buffer of `bytes` in one slice, as a request arrives.
inline grpc::ByteBuffer BufferOf(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

}  // namespace musicgw::gateway
