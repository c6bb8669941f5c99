// File: audio.h
// Deterministic audio for the emulators: a pulse at the requested bpm, a bass on the key root,
// a chord pad in the key's quality and a vibrato lead, mixed or rendered as one of four stems.
// Encoded to MP3 (libmp3lame, 128 kbps CBR, quality 7: fast) or FLAC (libFLAC++, 44.1 kHz,
// stereo, 16-bit, level 1). Rendering streams in blocks, so a 20-minute file needs constant
// memory.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace musicgw::emulators {

inline constexpr int kSampleRate = 44100;

struct AudioSpec {
  double seconds = 30;
  int bpm = 120;
  int key_root = 4;  // semitones above C (4 = E)
  bool minor = true;
  // "" = full mix; "vocals", "drums", "bass" or "other" = that stem alone.
  std::string stem;
  uint64_t seed = 0;  // varies timbre and melody between otherwise equal requests
  // Stable file-name-safe key; equal specs share one cached file.
  std::string Key() const;
};

enum class AudioFormat { kMp3, kFlac };

// Writes the file atomically enough for the cache (temp name, then rename).
absl::Status WriteMp3(const AudioSpec& spec, const std::string& path);
absl::Status WriteFlac(const AudioSpec& spec, const std::string& path);

// A directory of rendered files, each rendered at most once, on first request.
// Thread-safe: concurrent requests for one spec wait for a single render.
class AudioCache {
 public:
  // `dir` empty: a private temporary directory, removed by the destructor.
  static absl::StatusOr<std::unique_ptr<AudioCache>> Create(const std::string& dir);
  ~AudioCache();
  AudioCache(const AudioCache&) = delete;
  AudioCache& operator=(const AudioCache&) = delete;

  // The path of the rendered file, rendering it first when needed.
  absl::StatusOr<std::string> Get(const AudioSpec& spec, AudioFormat format);
  const std::string& dir() const { return dir_; }

 private:
  AudioCache(std::string dir, bool owned) : dir_(std::move(dir)), owned_(owned) {}
  struct Entry {
    absl::Mutex mu;
    bool done ABSL_GUARDED_BY(mu) = false;
    absl::Status status ABSL_GUARDED_BY(mu);
  };
  std::string dir_;
  bool owned_;
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Entry>> entries_ ABSL_GUARDED_BY(mu_);
};

}  // namespace musicgw::emulators
