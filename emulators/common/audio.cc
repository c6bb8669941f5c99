#include "emulators/common/audio.h"

#include <FLAC++/encoder.h>
#include <lame/lame.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <numbers>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace musicgw::emulators {
namespace {

constexpr double kTwoPi = 2 * std::numbers::pi;
constexpr size_t kBlockFrames = 4096;

double MidiToHz(double note) { return 440.0 * std::pow(2.0, (note - 69.0) / 12.0); }

// Table lookups with linear interpolation: std::sin/std::exp per sample made a 20-minute render
// take over a minute; these keep it to seconds and are exact enough for test audio.
class Tables {
 public:
  static const Tables& Get() {
    static const Tables* tables = new Tables();
    return *tables;
  }
  // sin(2*pi*cycles) for any cycles.
  double Sin(double cycles) const {
    const double c = (cycles - std::floor(cycles)) * kSinSize;
    const int i = static_cast<int>(c);
    return sin_[i] + (c - i) * (sin_[i + 1] - sin_[i]);
  }
  // exp(-x) for x >= 0 (0 beyond the table).
  double ExpNeg(double x) const {
    const double c = x * kExpPerUnit;
    if (c >= kExpSize) return 0.0;
    const int i = static_cast<int>(c);
    return exp_[i] + (c - i) * (exp_[i + 1] - exp_[i]);
  }

 private:
  static constexpr int kSinSize = 4096;
  static constexpr int kExpPerUnit = 256;
  static constexpr int kExpSize = 64 * kExpPerUnit;
  Tables() {
    for (int i = 0; i <= kSinSize; ++i) sin_[i] = std::sin(kTwoPi * i / kSinSize);
    for (int i = 0; i <= kExpSize; ++i) exp_[i] = std::exp(-static_cast<double>(i) / kExpPerUnit);
  }
  double sin_[kSinSize + 1];
  double exp_[kExpSize + 1];
};

uint64_t Mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

// Renders the spec block by block: a kick on every beat and a hat between (drums), the root and
// fifth in eighths (bass), a sustained triad in the key's quality (other), and a pentatonic
// vibrato lead chosen per beat from the seed (vocals). Purely a function of the spec.
class Synth {
 public:
  explicit Synth(const AudioSpec& spec)
      : spec_(spec),
        total_frames_(
            static_cast<int64_t>(std::llround(std::max(0.0, spec.seconds) * kSampleRate))),
        beat_frames_(60.0 * kSampleRate / std::clamp(spec.bpm, 20, 400)) {
    const int third = spec.minor ? 3 : 4;
    const int root = ((spec.key_root % 12) + 12) % 12;
    // Phase increments (cycles per sample), computed once.
    bass_inc_[0] = MidiToHz(36 + root) / kSampleRate;
    bass_inc_[1] = MidiToHz(36 + root + 7) / kSampleRate;
    pad_inc_[0] = MidiToHz(60 + root) / kSampleRate;
    pad_inc_[1] = MidiToHz(60 + root + third) / kSampleRate;
    pad_inc_[2] = MidiToHz(60 + root + 7) / kSampleRate;
    static constexpr int kMinorPenta[] = {0, 3, 5, 7, 10};
    static constexpr int kMajorPenta[] = {0, 2, 4, 7, 9};
    for (int i = 0; i < 5; ++i) {
      lead_inc_[i] =
          MidiToHz(72 + root + (spec.minor ? kMinorPenta[i] : kMajorPenta[i])) / kSampleRate;
    }
    want_drums_ = spec.stem.empty() || spec.stem == "drums";
    want_bass_ = spec.stem.empty() || spec.stem == "bass";
    want_other_ = spec.stem.empty() || spec.stem == "other";
    want_vocals_ = spec.stem.empty() || spec.stem == "vocals";
  }

  int64_t total_frames() const { return total_frames_; }

  // Fills up to `max_frames` interleaved stereo frames; returns how many (0 at the end).
  size_t Render(int16_t* out, size_t max_frames) {
    const size_t n = static_cast<size_t>(std::min<int64_t>(max_frames, total_frames_ - pos_));
    for (size_t i = 0; i < n; ++i, ++pos_) {
      double left = 0;
      double right = 0;
      Frame(pos_, &left, &right);
      // 20 ms fades so the ends do not click.
      const double edge = std::min<double>(pos_, total_frames_ - 1 - pos_) / (0.02 * kSampleRate);
      const double gain = std::min(1.0, std::max(0.0, edge));
      out[2 * i] = static_cast<int16_t>(std::clamp(left * gain, -1.0, 1.0) * 32000.0);
      out[2 * i + 1] = static_cast<int16_t>(std::clamp(right * gain, -1.0, 1.0) * 32000.0);
    }
    return n;
  }

 private:
  void Frame(int64_t pos, double* left, double* right) {
    const Tables& m = Tables::Get();
    const double t = static_cast<double>(pos) / kSampleRate;
    const double beat_pos = static_cast<double>(pos) / beat_frames_;
    const int64_t beat = static_cast<int64_t>(beat_pos);
    const double in_beat = (beat_pos - static_cast<double>(beat)) * beat_frames_ / kSampleRate;
    if (want_drums_) {
      // Kick: a falling sine burst at each beat.
      const double kick_freq = 50.0 + 70.0 * m.ExpNeg(in_beat * 30.0);
      kick_phase_ += kick_freq / kSampleRate;
      const double kick = m.Sin(kick_phase_) * m.ExpNeg(in_beat * 9.0);
      // Hat: short noise burst on the off-beat.
      const double half = beat_frames_ / 2 / kSampleRate;
      double hat = 0;
      if (in_beat >= half) {
        noise_ = noise_ * 6364136223846793005ULL + 1442695040888963407ULL;
        const double white = static_cast<double>(noise_ >> 40) / static_cast<double>(1 << 24) - 0.5;
        hat = white * m.ExpNeg((in_beat - half) * 60.0);
      }
      *left += 0.55 * kick + 0.18 * hat;
      *right += 0.55 * kick + 0.14 * hat;
    }
    if (want_bass_) {
      // Root on the first eighth of a bar, fifth on the fifth; root otherwise.
      const double eighth_pos = beat_pos * 2;
      const int64_t eighth = static_cast<int64_t>(eighth_pos);
      const double in_eighth =
          (eighth_pos - static_cast<double>(eighth)) * beat_frames_ / 2 / kSampleRate;
      bass_phase_ += bass_inc_[(eighth % 8) == 4 ? 1 : 0];
      const double env = m.ExpNeg(in_eighth * 6.0);
      const double bass = m.Sin(bass_phase_) + 0.3 * m.Sin(2 * bass_phase_);
      *left += 0.28 * env * bass;
      *right += 0.28 * env * bass;
    }
    if (want_other_) {
      double pad = 0;
      for (int i = 0; i < 3; ++i) {
        pad_phase_[i] += pad_inc_[i];
        pad += m.Sin(pad_phase_[i]) + 0.2 * m.Sin(2 * pad_phase_[i]);
      }
      const double tremolo = 0.75 + 0.25 * m.Sin(0.25 * t);
      *left += 0.07 * tremolo * pad;
      *right += 0.05 * tremolo * pad;
    }
    if (want_vocals_) {
      const uint64_t pick = Mix64(spec_.seed ^ static_cast<uint64_t>(beat) * 0x9E3779B97F4A7C15ULL);
      // +-0.15 semitone vibrato at 5 Hz (2^(x/12) ~ 1 + x ln2 / 12 for small x).
      const double vibrato = 1.0 + 0.15 * 0.05776 * m.Sin(5.0 * t);
      lead_phase_ += lead_inc_[pick % 5] * vibrato;
      const double attack = std::min(1.0, in_beat * 40.0);
      const double env = attack * m.ExpNeg(in_beat * 2.5);
      const double lead = m.Sin(lead_phase_) + 0.25 * m.Sin(3 * lead_phase_);
      *left += 0.10 * env * lead;
      *right += 0.16 * env * lead;
    }
  }

  AudioSpec spec_;
  int64_t total_frames_;
  double beat_frames_;
  int64_t pos_ = 0;
  double bass_inc_[2] = {};
  double pad_inc_[3] = {};
  double lead_inc_[5] = {};
  bool want_drums_ = true, want_bass_ = true, want_other_ = true, want_vocals_ = true;
  double kick_phase_ = 0, bass_phase_ = 0, lead_phase_ = 0;
  double pad_phase_[3] = {};
  uint64_t noise_ = 0x853c49e6748fea9bULL;
};

std::string TempName(const std::string& path) {
  return absl::StrCat(path, ".tmp.", ::getpid(), ".",
                      std::hash<std::thread::id>()(std::this_thread::get_id()));
}

absl::Status Publish(const std::string& tmp, const std::string& path) {
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

}  // namespace

std::string AudioSpec::Key() const {
  return absl::StrFormat("%s_%lldms_%dbpm_k%d%s_%016x", stem.empty() ? "mix" : stem,
                         static_cast<long long>(std::llround(seconds * 1000)), bpm, key_root,
                         minor ? "m" : "M", seed);
}

absl::Status WriteMp3(const AudioSpec& spec, const std::string& path) {
  std::unique_ptr<lame_global_flags, int (*)(lame_global_flags*)> lame(lame_init(), lame_close);
  if (!lame) return absl::InternalError("lame_init failed");
  lame_set_in_samplerate(lame.get(), kSampleRate);
  lame_set_out_samplerate(lame.get(), kSampleRate);
  lame_set_num_channels(lame.get(), 2);
  lame_set_mode(lame.get(), JOINT_STEREO);
  lame_set_brate(lame.get(), 128);
  // Quality 7 keeps encoding cheap: the tests and benchmarks render many files on two cores.
  lame_set_quality(lame.get(), 7);
  lame_set_bWriteVbrTag(lame.get(), 1);  // an Info frame: exact duration for ffprobe/sox
  if (lame_init_params(lame.get()) < 0) return absl::InternalError("lame_init_params failed");

  const std::string tmp = TempName(path);
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(tmp.c_str(), "wb+"), std::fclose);
  if (!file) return absl::InternalError(absl::StrCat("cannot create ", tmp));
  Synth synth(spec);
  std::vector<int16_t> pcm(kBlockFrames * 2);
  std::vector<unsigned char> mp3(kBlockFrames * 5 / 4 + 7200);
  bool ok = true;
  while (ok) {
    const size_t frames = synth.Render(pcm.data(), kBlockFrames);
    if (frames == 0) break;
    const int bytes = lame_encode_buffer_interleaved(
        lame.get(), pcm.data(), static_cast<int>(frames), mp3.data(), static_cast<int>(mp3.size()));
    ok = bytes >= 0 && std::fwrite(mp3.data(), 1, bytes, file.get()) == static_cast<size_t>(bytes);
  }
  if (ok) {
    const int bytes = lame_encode_flush(lame.get(), mp3.data(), static_cast<int>(mp3.size()));
    ok = bytes >= 0 && std::fwrite(mp3.data(), 1, bytes, file.get()) == static_cast<size_t>(bytes);
  }
  if (ok) lame_mp3_tags_fid(lame.get(), file.get());
  ok = std::fflush(file.get()) == 0 && ok;
  file.reset();
  if (!ok) {
    std::remove(tmp.c_str());
    return absl::InternalError(absl::StrCat("mp3 encoding failed for ", path));
  }
  return Publish(tmp, path);
}

absl::Status WriteFlac(const AudioSpec& spec, const std::string& path) {
  Synth synth(spec);
  FLAC::Encoder::File encoder;
  bool ok = encoder.set_channels(2) && encoder.set_bits_per_sample(16) &&
            encoder.set_sample_rate(kSampleRate) && encoder.set_compression_level(1) &&
            encoder.set_verify(false) &&
            encoder.set_total_samples_estimate(static_cast<FLAC__uint64>(synth.total_frames()));
  const std::string tmp = TempName(path);
  if (!ok || encoder.init(tmp) != FLAC__STREAM_ENCODER_INIT_STATUS_OK) {
    return absl::InternalError(absl::StrCat("cannot start the FLAC encoder for ", tmp));
  }
  std::vector<int16_t> pcm(kBlockFrames * 2);
  std::vector<FLAC__int32> wide(kBlockFrames * 2);
  while (ok) {
    const size_t frames = synth.Render(pcm.data(), kBlockFrames);
    if (frames == 0) break;
    std::copy(pcm.begin(), pcm.begin() + static_cast<std::ptrdiff_t>(frames * 2), wide.begin());
    ok = encoder.process_interleaved(wide.data(), static_cast<uint32_t>(frames));
  }
  ok = encoder.finish() && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    return absl::InternalError(absl::StrCat("FLAC encoding failed for ", path));
  }
  return Publish(tmp, path);
}

absl::StatusOr<std::unique_ptr<AudioCache>> AudioCache::Create(const std::string& dir) {
  if (dir.empty()) {
    std::string pattern = (std::filesystem::temp_directory_path() / "musicgw-emu-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      return absl::InternalError("cannot create a temporary audio cache directory");
    }
    return std::unique_ptr<AudioCache>(new AudioCache(pattern, /*owned=*/true));
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  return std::unique_ptr<AudioCache>(new AudioCache(dir, /*owned=*/false));
}

AudioCache::~AudioCache() {
  if (owned_) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

absl::StatusOr<std::string> AudioCache::Get(const AudioSpec& spec, AudioFormat format) {
  const std::string name = absl::StrCat(spec.Key(), format == AudioFormat::kMp3 ? ".mp3" : ".flac");
  const std::string path = (std::filesystem::path(dir_) / name).string();
  std::shared_ptr<Entry> entry;
  {
    absl::MutexLock lock(&mu_);
    auto& slot = entries_[name];
    if (!slot) slot = std::make_shared<Entry>();
    entry = slot;
  }
  // Held while rendering: concurrent requests for the same file wait for this one render.
  absl::MutexLock lock(&entry->mu);
  if (entry->done && entry->status.ok()) return path;
  std::error_code ec;
  if (std::filesystem::exists(path, ec)) {
    entry->done = true;
    entry->status = absl::OkStatus();
    return path;
  }
  entry->status = format == AudioFormat::kMp3 ? WriteMp3(spec, path) : WriteFlac(spec, path);
  entry->done = true;
  if (!entry->status.ok()) return entry->status;
  return path;
}

}  // namespace musicgw::emulators
