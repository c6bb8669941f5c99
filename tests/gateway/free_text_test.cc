#include "services/gateway/free_text.h"

#include <string>

#include "common/errors.h"
#include "gtest/gtest.h"
#include "musicgw/v1/musicgw.pb.h"

namespace musicgw::gateway {
namespace {

std::string FieldOf(const absl::Status& status) {
  google::rpc::BadRequest bad;
  if (!GetBadRequest(status, &bad) || bad.field_violations_size() == 0) return "";
  return bad.field_violations(0).field();
}

TEST(FreeTextTest, NulAndOtherC0ControlsAreRejectedNamingTheField) {
  for (const char c : {'\0', '\x01', '\x1b', '\x1f', '\x7f'}) {
    musicgw::v1::GenerateRequest request;
    request.mutable_song()->set_lyrics(std::string("la la") + c + "la");
    const absl::Status status = CheckFreeText(request);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << static_cast<int>(c);
    EXPECT_EQ(FieldOf(status), "song.lyrics");
    google::rpc::ErrorInfo info;
    ASSERT_TRUE(GetErrorInfo(status, &info));
    EXPECT_EQ(info.reason(), "INVALID_ARGUMENT");
  }
  musicgw::v1::GenerateRequest request;
  request.mutable_text_to_music()->set_prompt(std::string("calm\0piano", 10));
  EXPECT_EQ(FieldOf(CheckFreeText(request)), "text_to_music.prompt");
  EXPECT_NE(CheckFreeText(request).message().find("U+0000"), std::string::npos);
}

TEST(FreeTextTest, ProseKeepsTabAndLineBreaksOtherFieldsDoNot) {
  musicgw::v1::GenerateRequest request;
  request.mutable_song()->set_lyrics("verse one\n\tindented\r\nverse two");
  request.mutable_song()->set_prompt("upbeat\npop");
  EXPECT_TRUE(CheckFreeText(request).ok());

  musicgw::v1::GenerateRequest genre;
  genre.mutable_parametric_music()->set_genre("Deep\nHouse");
  EXPECT_EQ(FieldOf(CheckFreeText(genre)), "parametric_music.genre");

  musicgw::v1::GenerateRequest instruments;
  instruments.mutable_parametric_music()->add_instruments("DRUMS");
  instruments.mutable_parametric_music()->add_instruments("BA\tSS");
  EXPECT_EQ(FieldOf(CheckFreeText(instruments)), "parametric_music.instruments[1]");

  musicgw::v1::GenerateRequest id;
  id.set_request_id("abc\n");
  EXPECT_EQ(FieldOf(CheckFreeText(id)), "request_id");
}

TEST(FreeTextTest, PrintableUnicodeIsFine) {
  musicgw::v1::GenerateRequest request;
  request.mutable_song()->set_lyrics("Ünïcødé ♪ 歌詞 — fine");
  request.mutable_parametric_music()->set_genre("Drum 'n' Bass");
  EXPECT_TRUE(CheckFreeText(request).ok());
}

}  // namespace
}  // namespace musicgw::gateway
