#include "util/units.h"

#include <cctype>
#include <cstdio>
#include <limits>
#include <optional>

namespace goldcache {
namespace {

using u128 = unsigned __int128;

// At most this many digits after the decimal point: enough for any real
// config value, and small enough that fraction * unit fits in 128 bits.
constexpr int kMaxFractionDigits = 18;

// A decimal number as written: integer part plus numerator / 10^digits.
struct Decimal {
  u128 whole = 0;  // saturates just above 2^64 so overflow stays detectable
  uint64_t fraction = 0;
  uint64_t fraction_scale = 1;  // 10^digits after the point
};

bool IsBlank(char c) { return c == ' ' || c == '\t'; }

std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsBlank(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsBlank(s.back())) s.remove_suffix(1);
  return s;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

// Consumes "123", "1.5" or ".5" from the front of `s`. Returns nullopt (and
// consumes nothing) when there is no digit, or on too many fraction digits.
std::optional<Decimal> ConsumeDecimal(std::string_view& s) {
  constexpr u128 kSaturated = u128{std::numeric_limits<uint64_t>::max()} + 1;
  Decimal d;
  size_t i = 0;
  bool any_digit = false;
  for (; i < s.size() && std::isdigit(static_cast<unsigned char>(s[i])); ++i) {
    any_digit = true;
    d.whole = d.whole * 10 + static_cast<unsigned>(s[i] - '0');
    if (d.whole > kSaturated) d.whole = kSaturated;
  }
  if (i < s.size() && s[i] == '.') {
    ++i;
    int digits = 0;
    for (; i < s.size() && std::isdigit(static_cast<unsigned char>(s[i])); ++i) {
      any_digit = true;
      if (++digits > kMaxFractionDigits) return std::nullopt;
      d.fraction = d.fraction * 10 + static_cast<unsigned>(s[i] - '0');
      d.fraction_scale *= 10;
    }
  }
  if (!any_digit) return std::nullopt;
  s.remove_prefix(i);
  return d;
}

std::string_view ConsumeLetters(std::string_view& s) {
  size_t i = 0;
  while (i < s.size() && std::isalpha(static_cast<unsigned char>(s[i]))) ++i;
  std::string_view letters = s.substr(0, i);
  s.remove_prefix(i);
  return letters;
}

// value * multiplier when that is a whole number that fits in `limit`.
enum class Scaled { kOk, kFractional, kOverflow };
Scaled Scale(const Decimal& d, uint64_t multiplier, u128 limit, u128* out) {
  u128 whole = d.whole * multiplier;  // whole <= 2^64 and multiplier <= 2^60
  u128 frac = u128{d.fraction} * multiplier;
  u128 total = whole + frac / d.fraction_scale;
  if (total > limit) return Scaled::kOverflow;
  if (frac % d.fraction_scale != 0) return Scaled::kFractional;
  *out = total;
  return Scaled::kOk;
}

Status SizeError(std::string_view text, std::string_view why) {
  return Status::Error(Code::kInvalidArgument,
                       "invalid size \"" + std::string(text) + "\": " + std::string(why));
}

Status DurationError(std::string_view text, std::string_view why) {
  return Status::Error(Code::kInvalidArgument,
                       "invalid duration \"" + std::string(text) + "\": " + std::string(why));
}

std::optional<uint64_t> SizeMultiplier(std::string_view unit) {
  if (unit.empty() || EqualsIgnoreCase(unit, "B")) return 1;
  static constexpr char kPrefixes[] = "KMGTPE";
  for (int i = 0; kPrefixes[i] != '\0'; ++i) {
    uint64_t binary = uint64_t{1} << (10 * (i + 1));
    uint64_t decimal = 1;
    for (int j = 0; j <= i; ++j) decimal *= 1000;
    const char p[2] = {kPrefixes[i], '\0'};
    std::string bare(p), bin = std::string(p) + "iB", dec = std::string(p) + "B";
    if (EqualsIgnoreCase(unit, bare) || EqualsIgnoreCase(unit, bin)) return binary;
    if (EqualsIgnoreCase(unit, dec)) return decimal;
  }
  return std::nullopt;
}

std::optional<int64_t> DurationMultiplierMs(std::string_view unit) {
  if (EqualsIgnoreCase(unit, "ms")) return 1;
  if (EqualsIgnoreCase(unit, "s")) return 1000;
  if (EqualsIgnoreCase(unit, "m")) return 60 * 1000;
  if (EqualsIgnoreCase(unit, "h")) return 60 * 60 * 1000;
  if (EqualsIgnoreCase(unit, "d")) return 24 * 60 * 60 * 1000;
  return std::nullopt;
}

}  // namespace

Result<uint64_t> ParseSize(std::string_view text) {
  std::string_view s = Trim(text);
  if (s.empty()) return SizeError(text, "empty");
  if (s.front() == '-') return SizeError(text, "a size cannot be negative");
  if (s.front() == '+') s.remove_prefix(1);
  std::optional<Decimal> number = ConsumeDecimal(s);
  if (!number) return SizeError(text, "expected a number, e.g. 4096, 64KiB, 200GiB");
  s = Trim(s);
  std::string_view unit = ConsumeLetters(s);
  if (!s.empty()) return SizeError(text, "unexpected \"" + std::string(s) + "\" after the unit");
  std::optional<uint64_t> multiplier = SizeMultiplier(unit);
  if (!multiplier) {
    return SizeError(text, "unknown unit \"" + std::string(unit) +
                               "\" (use B, KiB/MiB/GiB/TiB, K/M/G/T, or KB/MB/GB/TB)");
  }
  u128 bytes = 0;
  switch (Scale(*number, *multiplier, std::numeric_limits<uint64_t>::max(), &bytes)) {
    case Scaled::kOk:
      return static_cast<uint64_t>(bytes);
    case Scaled::kFractional:
      return SizeError(text, "not a whole number of bytes");
    case Scaled::kOverflow:
      break;
  }
  return SizeError(text, "too large (the limit is 16 EiB - 1 byte)");
}

Result<std::chrono::milliseconds> ParseDuration(std::string_view text) {
  constexpr u128 kLimit = std::numeric_limits<int64_t>::max();
  std::string_view s = Trim(text);
  if (s.empty()) return DurationError(text, "empty");
  if (s.front() == '-') return DurationError(text, "a duration cannot be negative");
  if (s.front() == '+') s.remove_prefix(1);
  u128 total_ms = 0;
  int64_t previous_unit_ms = std::numeric_limits<int64_t>::max();
  bool first = true;
  while (!s.empty()) {
    std::optional<Decimal> number = ConsumeDecimal(s);
    if (!number) return DurationError(text, "expected a number, e.g. 250ms, 30s, 5m, 1h30m");
    s = Trim(s);
    std::string_view unit = ConsumeLetters(s);
    s = Trim(s);
    int64_t unit_ms;
    if (unit.empty()) {
      if (!first || !s.empty()) return DurationError(text, "every part needs a unit");
      unit_ms = 1000;  // a bare number is seconds, like sleep(1)
    } else if (std::optional<int64_t> m = DurationMultiplierMs(unit)) {
      unit_ms = *m;
    } else {
      return DurationError(text, "unknown unit \"" + std::string(unit) + "\" (use ms, s, m, h, d)");
    }
    if (unit_ms >= previous_unit_ms) {
      return DurationError(text, "units must go from largest to smallest, each once");
    }
    previous_unit_ms = unit_ms;
    first = false;
    u128 part = 0;
    switch (Scale(*number, static_cast<uint64_t>(unit_ms), kLimit, &part)) {
      case Scaled::kOk:
        break;
      case Scaled::kFractional:
        return DurationError(text, "finer than one millisecond");
      case Scaled::kOverflow:
        return DurationError(text, "too large");
    }
    total_ms += part;
    if (total_ms > kLimit) return DurationError(text, "too large");
  }
  return std::chrono::milliseconds(static_cast<int64_t>(total_ms));
}

std::string FormatBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  constexpr int kLast = 6;
  if (bytes < 1024) return std::to_string(bytes) + " B";
  int unit = 0;
  while (unit < kLast && bytes >= (uint64_t{1} << (10 * (unit + 1)))) ++unit;
  // Tenths of the unit, rounded half up; rounding may carry into the next unit
  // (1023.96 KiB is shown as "1 MiB", not "1024 KiB").
  u128 divisor = u128{1} << (10 * unit);
  u128 tenths = (u128{bytes} * 10 + divisor / 2) / divisor;
  if (tenths >= 10240 && unit < kLast) {
    ++unit;
    divisor <<= 10;
    tenths = (u128{bytes} * 10 + divisor / 2) / divisor;
  }
  uint64_t whole = static_cast<uint64_t>(tenths / 10);
  unsigned tenth = static_cast<unsigned>(tenths % 10);
  std::string out = std::to_string(whole);
  if (tenth != 0) out += "." + std::to_string(tenth);
  out += " ";
  out += kUnits[unit];
  return out;
}

}  // namespace goldcache
