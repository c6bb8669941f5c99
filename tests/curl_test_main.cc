// Test main for suites that use libcurl: curl_global_init once, before any thread starts.
#include <curl/curl.h>

#include "gtest/gtest.h"

int main(int argc, char** argv) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  testing::InitGoogleTest(&argc, argv);
  const int result = RUN_ALL_TESTS();
  curl_global_cleanup();
  return result;
}
