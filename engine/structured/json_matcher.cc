// JsonMatcher: a nondeterministic pushdown automaton over a compiled grammar
// (json_grammar_impl.h). Every live parse is one stack of frames; a byte maps
// each stack to zero or more successor stacks, deduplicated.
//
// Frame fields per node kind:
//   root    pos: kRootStart (ws = leading whitespace so far) / kRootValue / kRootDone
//   object  pos: see kObj*; ws: whitespace run; small: next declared property
//           index; a: key trie node while in a declared key; b: the value node
//           after a key
//   array   pos: see kArr*; ws: whitespace run; a: items so far
//   string  pos: see kStr*; a: code points so far; b: node in the excluded
//           names' trie (kOffTrie once off it); ws/small: UTF-8 bytes still
//           due and their allowed range, or \u digits so far and their value
//   number  pos: see kNum*; ws: digits in the current part; small: bit 15 the
//           sign, low bits the fraction digits' value (bounded numbers);
//           a:b the integer part's value (bounded numbers)
//   literal a: node in the literals' trie
#include <algorithm>
#include <array>
#include <cstring>

#include "engine/structured/json_grammar.h"
#include "engine/structured/json_grammar_impl.h"

namespace sirocco::engine::structured {
namespace {

using internal::Frame;
using internal::State;

// Whether `state` holds the stack frames[0..size) as one of its stacks.
bool HasStack(const State& state, const Frame* frames, std::uint32_t size) {
  std::uint32_t begin = 0;
  for (const std::uint32_t end : state.ends) {
    if (end - begin == size && std::equal(frames, frames + size, state.frames.begin() + begin)) return true;
    begin = end;
  }
  return false;
}

enum : std::uint8_t { kRootStart, kRootValue, kRootDone };
enum : std::uint8_t {
  kObjOpen,
  kObjStart,
  kObjKey,
  kObjKeyStr,
  kObjAfterKey,
  kObjColon,
  kObjValue,
  kObjAfterValue,
  kObjComma
};
enum : std::uint8_t { kArrOpen, kArrStart, kArrValue, kArrAfterValue, kArrComma };
enum : std::uint8_t { kStrOpen, kStrBody, kStrUtf8, kStrEsc, kStrHex };
enum : std::uint8_t { kNumStart, kNumMinus, kNumZero, kNumInt, kNumDot, kNumFrac, kNumE, kNumESign, kNumExp };

constexpr std::uint32_t kOffTrie = UINT32_MAX;
constexpr int kMaxFrames = kMaxNestingDepth + 2;  // root + containers + one scalar
constexpr int kMaxIntDigits = 19;
constexpr int kMaxFractionDigits = 20;
constexpr int kMaxExponentDigits = 2;
constexpr std::uint16_t kNegative = 0x8000;

static_assert(kStrBody == kStringBodyPos);

enum class ByteOutcome { kReject, kStay, kDone };

bool IsWs(std::uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool IsDigit(std::uint8_t c) { return c >= '0' && c <= '9'; }
int HexValue(std::uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
Int128 Pow10(int n) {
  Int128 v = 1;
  for (int i = 0; i < n; ++i) v *= 10;
  return v;
}
std::uint64_t IntPart(const Frame& f) { return (std::uint64_t{f.a} << 32) | f.b; }
void SetIntPart(Frame& f, std::uint64_t v) {
  f.a = static_cast<std::uint32_t>(v >> 32);
  f.b = static_cast<std::uint32_t>(v);
}

// Bounded numbers: magnitudes (scaled by 10^fraction_scale_digits) in [a, b]
// with the given sign include one within the node's bounds.
bool Intersects(const GrammarNode& n, bool negative, Int128 a, Int128 b) {
  Int128 lo, hi;
  if (!negative) {
    lo = std::max<Int128>(n.lo, 0);
    hi = n.hi;
  } else {
    lo = std::max<Int128>(-n.hi, 0);
    hi = -n.lo;
  }
  return lo <= hi && a <= hi && b >= lo;
}
// Some completion of an integer part `p` (p == 0: the part is "0") lies in bounds.
bool IntPrefixViable(const GrammarNode& n, bool negative, std::uint64_t p) {
  const Int128 scale = Pow10(n.fraction_scale_digits);
  if (p == 0) return Intersects(n, negative, 0, scale - 1);
  const Int128 max_mag = std::max<Int128>(n.hi < 0 ? -n.hi : n.hi, n.lo < 0 ? -n.lo : n.lo);
  for (Int128 w = 1;; w *= 10) {
    const Int128 a = static_cast<Int128>(p) * w * scale;
    if (a > max_mag) return false;
    if (Intersects(n, negative, a, (static_cast<Int128>(p) + 1) * w * scale - 1)) return true;
  }
}
// The scaled magnitude of a bounded number's text so far, and the width of
// the interval further fraction digits can reach.
Int128 ScaledValue(const GrammarNode& n, const Frame& f, Int128* unit) {
  const Int128 scale = Pow10(n.fraction_scale_digits);
  Int128 v = static_cast<Int128>(IntPart(f)) * scale;
  *unit = scale;
  if (f.pos == kNumFrac) {
    *unit = Pow10(n.fraction_scale_digits - f.ws);
    v += static_cast<Int128>(f.small & ~kNegative) * *unit;
  }
  return v;
}

// Walks the excluded names' trie over one decoded byte.
void Exclude(const JsonGrammar::Impl& g, const GrammarNode& n, Frame& top, std::uint8_t byte) {
  if (n.excluded_trie < 0 || top.b == kOffTrie) return;
  const std::int32_t child = g.tries[static_cast<std::size_t>(n.excluded_trie)].Child(top.b, byte);
  top.b = child < 0 ? kOffTrie : static_cast<std::uint32_t>(child);
}

ByteOutcome StringByte(const JsonGrammar::Impl& g, const GrammarNode& n, Frame& top, std::uint8_t c) {
  switch (top.pos) {
    case kStrOpen:
      if (c != '"') return ByteOutcome::kReject;
      top.pos = kStrBody;
      return ByteOutcome::kStay;
    case kStrBody:
      if (c == '"') {
        if (top.a < n.min_length) return ByteOutcome::kReject;
        if (n.excluded_trie >= 0 && top.b != kOffTrie &&
            g.tries[static_cast<std::size_t>(n.excluded_trie)].nodes[top.b].terminal >= 0) {
          return ByteOutcome::kReject;
        }
        return ByteOutcome::kDone;
      }
      if (c < 0x20 || top.a >= n.max_length) return ByteOutcome::kReject;
      if (c == '\\') {
        top.pos = kStrEsc;
      } else if (c >= 0x80) {
        std::uint8_t need, lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
          need = 1;
        } else if (c == 0xE0) {
          need = 2;
          lo = 0xA0;
        } else if (c == 0xED) {
          need = 2;
          hi = 0x9F;
        } else if (c >= 0xE1 && c <= 0xEF) {
          need = 2;
        } else if (c == 0xF0) {
          need = 3;
          lo = 0x90;
        } else if (c >= 0xF1 && c <= 0xF3) {
          need = 3;
        } else if (c == 0xF4) {
          need = 3;
          hi = 0x8F;
        } else {
          return ByteOutcome::kReject;
        }
        top.pos = kStrUtf8;
        top.ws = need;
        top.small = static_cast<std::uint16_t>(lo | (hi << 8));
        Exclude(g, n, top, c);
      } else {
        Exclude(g, n, top, c);
      }
      // Counted only as far as a bound needs: without maxLength the count
      // stops at minLength, so the state of a long free string stops
      // changing (equal states share cached masks).
      if (n.max_length != UINT32_MAX || top.a < n.min_length) ++top.a;
      return ByteOutcome::kStay;
    case kStrUtf8:
      if (c < (top.small & 0xFF) || c > (top.small >> 8)) return ByteOutcome::kReject;
      Exclude(g, n, top, c);
      if (--top.ws == 0) {
        top.pos = kStrBody;
        top.small = 0;
      } else {
        top.small = 0x80 | (0xBF << 8);
      }
      return ByteOutcome::kStay;
    case kStrEsc: {
      std::uint8_t decoded;
      switch (c) {
        case '"':
        case '\\':
        case '/':
          decoded = c;
          break;
        case 'b':
          decoded = '\b';
          break;
        case 'f':
          decoded = '\f';
          break;
        case 'n':
          decoded = '\n';
          break;
        case 'r':
          decoded = '\r';
          break;
        case 't':
          decoded = '\t';
          break;
        case 'u':
          top.pos = kStrHex;
          top.ws = 0;
          top.small = 0;
          return ByteOutcome::kStay;
        default:
          return ByteOutcome::kReject;
      }
      Exclude(g, n, top, decoded);
      top.pos = kStrBody;
      return ByteOutcome::kStay;
    }
    case kStrHex: {
      const int h = HexValue(c);
      if (h < 0) return ByteOutcome::kReject;
      const std::uint32_t v = (std::uint32_t{top.small} << 4) | static_cast<std::uint32_t>(h);
      ++top.ws;
      if (top.ws == 2 && v >= 0xD8 && v <= 0xDF) return ByteOutcome::kReject;  // UTF-16 surrogates are refused
      if (top.ws < 4) {
        top.small = static_cast<std::uint16_t>(v);
        return ByteOutcome::kStay;
      }
      if (v < 0x80) {
        Exclude(g, n, top, static_cast<std::uint8_t>(v));
      } else if (v < 0x800) {
        Exclude(g, n, top, static_cast<std::uint8_t>(0xC0 | (v >> 6)));
        Exclude(g, n, top, static_cast<std::uint8_t>(0x80 | (v & 0x3F)));
      } else {
        Exclude(g, n, top, static_cast<std::uint8_t>(0xE0 | (v >> 12)));
        Exclude(g, n, top, static_cast<std::uint8_t>(0x80 | ((v >> 6) & 0x3F)));
        Exclude(g, n, top, static_cast<std::uint8_t>(0x80 | (v & 0x3F)));
      }
      top.pos = kStrBody;
      top.ws = 0;
      top.small = 0;
      return ByteOutcome::kStay;
    }
    default:
      return ByteOutcome::kReject;
  }
}

class Stepper {
 public:
  Stepper(const JsonGrammar::Impl& g, State* dst, Frame* scratch) : g_(g), dst_(dst), scratch_(scratch) {}

  // The stack base[0..k) + top over byte c.
  void Step(const Frame* base, int k, Frame top, std::uint8_t c) {
    if (k > 0 && Accepting(top)) Step(base, k - 1, ChildDone(base[k - 1]), c);
    Inner(base, k, top, c);
  }

  bool Accepting(const Frame& f) const {
    const GrammarNode& n = g_.nodes[f.node];
    if (n.kind == NodeKind::kLiteral) return g_.tries[n.literal_trie].nodes[f.a].terminal >= 0;
    if (n.kind != NodeKind::kNumber) return false;
    if (f.pos != kNumZero && f.pos != kNumInt && f.pos != kNumFrac && f.pos != kNumExp) return false;
    if (!n.bounded) return true;
    Int128 unit;
    const Int128 v = ScaledValue(n, f, &unit);
    return Intersects(n, (f.small & kNegative) != 0, v, v);
  }

  Frame ChildDone(Frame p) const {
    const GrammarNode& n = g_.nodes[p.node];
    switch (n.kind) {
      case NodeKind::kRoot:
        p.pos = kRootDone;
        break;
      case NodeKind::kObject:
        if (p.pos == kObjKeyStr) {
          p.pos = kObjAfterKey;
          p.b = static_cast<std::uint32_t>(n.additional);
          p.small = static_cast<std::uint16_t>(n.properties.size());
        } else {
          p.pos = kObjAfterValue;
        }
        p.ws = 0;
        break;
      case NodeKind::kArray:
        p.pos = kArrAfterValue;
        p.ws = 0;
        ++p.a;
        break;
      default:
        break;
    }
    return p;
  }

  bool overflow() const { return overflow_; }

 private:
  void Emit(const Frame* base, int k, const Frame& top) {
    const std::size_t size = static_cast<std::size_t>(k) + 1;
    std::uint32_t begin = 0;
    for (const std::uint32_t end : dst_->ends) {
      if (end - begin == size && dst_->frames[end - 1] == top &&
          std::equal(base, base + k, dst_->frames.begin() + begin)) {
        return;
      }
      begin = end;
    }
    if (dst_->ends.size() >= static_cast<std::size_t>(kMaxAlternatives)) {
      overflow_ = true;
      return;
    }
    dst_->frames.insert(dst_->frames.end(), base, base + k);
    dst_->frames.push_back(top);
    dst_->ends.push_back(static_cast<std::uint32_t>(dst_->frames.size()));
  }

  // The top of base[0..k) + (finished value) was completed by the byte.
  void PopDone(const Frame* base, int k) { Emit(base, k - 1, ChildDone(base[k - 1])); }

  // `parent` (on top of base[0..k)) starts a value of `node` with byte c.
  void Push(const Frame* base, int k, const Frame& parent, std::uint32_t node, std::uint8_t c) {
    if (k + 2 > kMaxFrames) return;
    std::copy(base, base + k, scratch_);
    scratch_[k] = parent;
    const GrammarNode& n = g_.nodes[node];
    if (n.kind == NodeKind::kUnion) {
      for (const std::uint32_t m : n.members) PushOne(k, m, c);
    } else {
      PushOne(k, node, c);
    }
  }
  void PushOne(int k, std::uint32_t node, std::uint8_t c) {
    const NodeKind kind = g_.nodes[node].kind;
    // k + 1 frames below the new one: the root and k containers.
    if ((kind == NodeKind::kObject || kind == NodeKind::kArray) && k + 1 > kMaxNestingDepth) return;
    Inner(scratch_, k + 1, Frame{.node = node}, c);
  }

  // A whitespace byte in a container: one more in the run, if allowed.
  void Whitespace(const Frame* base, int k, Frame top) {
    if (top.ws >= kMaxWhitespaceRun) return;
    ++top.ws;
    Emit(base, k, top);
  }

  void Inner(const Frame* base, int k, Frame top, std::uint8_t c) {
    const GrammarNode& n = g_.nodes[top.node];
    switch (n.kind) {
      case NodeKind::kRoot:
        if (top.pos != kRootStart) return;
        if (IsWs(c)) {
          if (top.ws >= kMaxLeadingWhitespace) return;
          ++top.ws;
          Emit(base, k, top);
          return;
        }
        top.pos = kRootValue;
        Push(base, k, top, g_.value, c);
        return;
      case NodeKind::kObject:
        return Object(n, base, k, top, c);
      case NodeKind::kArray:
        return Array(n, base, k, top, c);
      case NodeKind::kString:
        return String(n, base, k, top, c);
      case NodeKind::kNumber:
        return Number(n, base, k, top, c);
      case NodeKind::kLiteral: {
        const ByteTrie& trie = g_.tries[n.literal_trie];
        const std::int32_t child = trie.Child(top.a, c);
        if (child < 0) return;
        const ByteTrie::Node& cn = trie.nodes[static_cast<std::size_t>(child)];
        if (cn.terminal >= 0 && cn.children.empty()) return PopDone(base, k);
        top.a = static_cast<std::uint32_t>(child);
        Emit(base, k, top);
        return;
      }
      case NodeKind::kUnion:
        return;
    }
  }

  // Whether a declared key may still reach one of the properties next..r.
  bool KeyViable(const GrammarNode& n, const ByteTrie::Node& tn, std::uint16_t next) const {
    const std::size_t count = n.properties.size();
    if (next >= count) return false;
    const std::uint16_t r = std::min<std::uint16_t>(n.next_required[next], static_cast<std::uint16_t>(count - 1));
    const auto it = std::lower_bound(tn.indices.begin(), tn.indices.end(), next);
    return it != tn.indices.end() && *it <= r;
  }
  bool NoRequiredLeft(const GrammarNode& n, std::uint16_t next) const {
    return next >= n.properties.size() || n.next_required[next] == n.properties.size();
  }

  void Object(const GrammarNode& n, const Frame* base, int k, Frame top, std::uint8_t c) {
    switch (top.pos) {
      case kObjOpen:
        if (c != '{') return;
        top.pos = kObjStart;
        Emit(base, k, top);
        return;
      case kObjStart:
      case kObjComma:
        if (IsWs(c)) return Whitespace(base, k, top);
        if (c == '}') {
          if (top.pos == kObjStart && NoRequiredLeft(n, top.small)) PopDone(base, k);
          return;
        }
        if (c != '"') return;
        if (!n.properties.empty()) {
          const ByteTrie& trie = g_.tries[n.key_trie];
          const std::int32_t child = trie.Child(0, c);
          if (child >= 0 && KeyViable(n, trie.nodes[static_cast<std::size_t>(child)], top.small)) {
            Frame key = top;
            key.pos = kObjKey;
            key.a = static_cast<std::uint32_t>(child);
            Emit(base, k, key);
          }
        }
        if (n.additional >= 0 && NoRequiredLeft(n, top.small)) {
          Frame parent = top;
          parent.pos = kObjKeyStr;
          Push(base, k, parent, n.key_string, c);
        }
        return;
      case kObjKey: {
        const ByteTrie& trie = g_.tries[n.key_trie];
        const std::int32_t child = trie.Child(top.a, c);
        if (child < 0) return;
        const ByteTrie::Node& tn = trie.nodes[static_cast<std::size_t>(child)];
        if (!KeyViable(n, tn, top.small)) return;
        if (tn.terminal >= 0) {
          top.pos = kObjAfterKey;
          top.ws = 0;
          top.small = static_cast<std::uint16_t>(tn.terminal + 1);
          top.b = n.properties[static_cast<std::size_t>(tn.terminal)].value;
        } else {
          top.a = static_cast<std::uint32_t>(child);
        }
        Emit(base, k, top);
        return;
      }
      case kObjAfterKey:
        if (IsWs(c)) return Whitespace(base, k, top);
        if (c != ':') return;
        top.pos = kObjColon;
        top.ws = 0;
        Emit(base, k, top);
        return;
      case kObjColon:
        if (IsWs(c)) return Whitespace(base, k, top);
        top.pos = kObjValue;
        Push(base, k, top, top.b, c);
        return;
      case kObjAfterValue:
        if (IsWs(c)) return Whitespace(base, k, top);
        if (c == '}') {
          if (NoRequiredLeft(n, top.small)) PopDone(base, k);
          return;
        }
        if (c != ',') return;
        if (top.small < n.properties.size() || (n.additional >= 0 && NoRequiredLeft(n, top.small))) {
          top.pos = kObjComma;
          top.ws = 0;
          Emit(base, k, top);
        }
        return;
      default:
        return;
    }
  }

  std::int32_t ItemNode(const GrammarNode& n, std::uint32_t index) const {
    if (index >= n.max_items) return -1;
    if (index < n.prefix_items.size()) return static_cast<std::int32_t>(n.prefix_items[index]);
    return n.items;
  }

  void Array(const GrammarNode& n, const Frame* base, int k, Frame top, std::uint8_t c) {
    switch (top.pos) {
      case kArrOpen:
        if (c != '[') return;
        top.pos = kArrStart;
        Emit(base, k, top);
        return;
      case kArrStart:
      case kArrComma: {
        if (IsWs(c)) return Whitespace(base, k, top);
        if (c == ']') {
          if (top.pos == kArrStart && n.min_items == 0) PopDone(base, k);
          return;
        }
        const std::int32_t item = ItemNode(n, top.a);
        if (item < 0) return;
        top.pos = kArrValue;
        Push(base, k, top, static_cast<std::uint32_t>(item), c);
        return;
      }
      case kArrAfterValue:
        if (IsWs(c)) return Whitespace(base, k, top);
        if (c == ']') {
          if (top.a >= n.min_items) PopDone(base, k);
          return;
        }
        if (c != ',' || ItemNode(n, top.a) < 0) return;
        top.pos = kArrComma;
        top.ws = 0;
        Emit(base, k, top);
        return;
      default:
        return;
    }
  }

  void String(const GrammarNode& n, const Frame* base, int k, Frame top, std::uint8_t c) {
    switch (StringByte(g_, n, top, c)) {
      case ByteOutcome::kStay:
        Emit(base, k, top);
        return;
      case ByteOutcome::kDone:
        PopDone(base, k);
        return;
      case ByteOutcome::kReject:
        return;
    }
  }

  void Number(const GrammarNode& n, const Frame* base, int k, Frame top, std::uint8_t c) {
    const bool negative = (top.small & kNegative) != 0;
    const bool digit = IsDigit(c);
    const std::uint64_t d = digit ? static_cast<std::uint64_t>(c - '0') : 0;
    switch (top.pos) {
      case kNumStart:
      case kNumMinus: {
        const bool minus = top.pos == kNumMinus;
        if (c == '-' && !minus) {
          if (n.bounded && !Intersects(n, true, n.integer ? 1 : 0, static_cast<Int128>(1) << 100)) return;
          top.pos = kNumMinus;
          top.small = kNegative;
          Emit(base, k, top);
          return;
        }
        if (!digit) return;
        if (d == 0 && minus && n.integer) return;  // no "-0" integers
        if (n.bounded && !IntPrefixViable(n, minus, d)) return;
        top.pos = d == 0 ? kNumZero : kNumInt;
        top.ws = 1;
        SetIntPart(top, d);
        Emit(base, k, top);
        return;
      }
      case kNumZero:
      case kNumInt:
        if (digit) {
          if (top.pos == kNumZero) return;
          if (n.bounded) {
            const std::uint64_t p = IntPart(top);
            if (p > (UINT64_MAX - 9) / 10) return;
            if (!IntPrefixViable(n, negative, p * 10 + d)) return;
            SetIntPart(top, p * 10 + d);
          } else if (top.ws >= kMaxIntDigits) {
            return;
          }
          ++top.ws;
          Emit(base, k, top);
          return;
        }
        if (c == '.') {
          if (n.integer) return;
          if (n.bounded) {
            const Int128 scale = Pow10(n.fraction_scale_digits);
            const Int128 v = static_cast<Int128>(IntPart(top)) * scale;
            if (!Intersects(n, negative, v, v + scale - 1)) return;
          }
          top.pos = kNumDot;
          top.ws = 0;
          Emit(base, k, top);
          return;
        }
        if (c == 'e' || c == 'E') {
          if (n.integer || n.bounded) return;
          top.pos = kNumE;
          top.ws = 0;
          Emit(base, k, top);
        }
        return;
      case kNumDot:
      case kNumFrac:
        if (digit) {
          const int limit = n.bounded ? n.fraction_scale_digits : kMaxFractionDigits;
          const int digits = top.pos == kNumDot ? 0 : top.ws;
          if (digits >= limit) return;
          Frame next = top;
          next.pos = kNumFrac;
          next.ws = static_cast<std::uint8_t>(digits + 1);
          if (n.bounded) {
            const std::uint16_t f =
                static_cast<std::uint16_t>((top.pos == kNumDot ? 0 : (top.small & ~kNegative)) * 10 + d);
            next.small = static_cast<std::uint16_t>(f | (negative ? kNegative : 0));
            Int128 unit;
            const Int128 v = ScaledValue(n, next, &unit);
            if (!Intersects(n, negative, v, v + unit - 1)) return;
          }
          Emit(base, k, next);
          return;
        }
        if ((c == 'e' || c == 'E') && top.pos == kNumFrac && !n.bounded) {
          top.pos = kNumE;
          top.ws = 0;
          Emit(base, k, top);
        }
        return;
      case kNumE:
        if (c == '+' || c == '-') {
          top.pos = kNumESign;
          Emit(base, k, top);
          return;
        }
        [[fallthrough]];
      case kNumESign:
        if (!digit) return;
        top.pos = kNumExp;
        top.ws = 1;
        Emit(base, k, top);
        return;
      case kNumExp:
        if (!digit || top.ws >= kMaxExponentDigits) return;
        ++top.ws;
        Emit(base, k, top);
        return;
      default:
        return;
    }
  }

  const JsonGrammar::Impl& g_;
  State* dst_;
  Frame* scratch_;
  bool overflow_ = false;
};

Frame* Scratch() {
  thread_local std::array<Frame, kMaxFrames + 1> scratch;
  return scratch.data();
}

std::uint64_t Mix(std::uint64_t h, std::uint64_t v) {
  h ^= v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
  h *= 0xFF51AFD7ED558CCDull;
  return h ^ (h >> 32);
}

}  // namespace

bool StepStack(const JsonGrammar::Impl& grammar, const Frame* base, int k, const Frame& top, std::uint8_t byte,
               State* to) {
  to->Clear();
  Stepper stepper(grammar, to, Scratch());
  stepper.Step(base, k, top, byte);
  return !stepper.overflow() && !to->ends.empty();
}

int StepStringTop(const JsonGrammar::Impl& grammar, Frame* top, std::uint8_t byte) {
  const GrammarNode& n = grammar.nodes[top->node];
  if (n.kind != NodeKind::kString || top->pos == kStrOpen) return -1;
  Frame next = *top;
  switch (StringByte(grammar, n, next, byte)) {
    case ByteOutcome::kStay:
      *top = next;
      return 1;
    case ByteOutcome::kReject:
      return 0;
    case ByteOutcome::kDone:
      break;
  }
  return -1;
}

bool StepState(const JsonGrammar::Impl& grammar, const State& from, std::uint8_t byte, State* to) {
  to->Clear();
  Stepper stepper(grammar, to, Scratch());
  std::uint32_t begin = 0;
  for (const std::uint32_t end : from.ends) {
    const Frame* stack = from.frames.data() + begin;
    const int k = static_cast<int>(end - begin) - 1;
    stepper.Step(stack, k, stack[k], byte);
    begin = end;
  }
  return !stepper.overflow() && !to->ends.empty();
}

JsonMatcher::JsonMatcher(std::shared_ptr<const JsonGrammar> grammar) : grammar_(std::move(grammar)) {
  state_.frames.push_back(Frame{.node = 0, .pos = kRootStart});
  state_.ends.push_back(1);
}

bool JsonMatcher::Consume(std::string_view bytes) {
  if (bytes.empty()) return true;
  State a, b;
  const State* from = &state_;
  for (const char ch : bytes) {
    if (!StepState(grammar_->impl(), *from, static_cast<std::uint8_t>(ch), &b)) return false;
    std::swap(a, b);
    from = &a;
  }
  state_ = std::move(a);
  return true;
}

bool JsonMatcher::ConsumeByte(std::uint8_t byte) {
  State next;
  if (!StepState(grammar_->impl(), state_, byte, &next)) return false;
  state_ = std::move(next);
  return true;
}

bool JsonMatcher::CanEnd() const {
  Stepper stepper(grammar_->impl(), nullptr, nullptr);
  std::uint32_t begin = 0;
  for (const std::uint32_t end : state_.ends) {
    const Frame* stack = state_.frames.data() + begin;
    const std::uint32_t size = end - begin;
    if (size == 1 && stack[0].pos == kRootDone) return true;
    if (size == 2 && stepper.Accepting(stack[1])) return true;
    begin = end;
  }
  return false;
}

bool JsonMatcher::MustEnd() const {
  // Likely bytes first: most states accept one of them.
  static constexpr std::string_view kLikely = "\"0,}] 1a{[-.e";
  State next;
  for (const char ch : kLikely) {
    if (StepState(grammar_->impl(), state_, static_cast<std::uint8_t>(ch), &next)) return false;
  }
  for (int c = 0; c < 256; ++c) {
    if (StepState(grammar_->impl(), state_, static_cast<std::uint8_t>(c), &next)) return false;
  }
  return true;
}

JsonMatcher JsonMatcher::MaskKey(int max_token_bytes) const {
  JsonMatcher key = *this;
  const auto k = static_cast<std::uint64_t>(std::max(max_token_bytes, 0));
  bool changed = false;
  for (Frame& f : key.state_.frames) {
    const GrammarNode& n = grammar_->impl().nodes[f.node];
    if (n.kind != NodeKind::kString || f.pos == kStrOpen) continue;
    const std::uint64_t a = f.a, min = n.min_length, max = n.max_length;
    // One token adds at most k characters: a token's fate depends on the
    // count only where it may reach maxLength, or cross minLength, within k.
    if (max != UINT32_MAX && max - a <= k) continue;
    std::uint64_t canonical = a;
    if (a >= min) {
      canonical = min;  // every closing quote allowed, maxLength out of reach (max - min >= max - a > k)
    } else if (min - a > k) {
      canonical = min - k - 1;  // no closing quote within a token, maxLength out of reach
    }
    if (canonical != a) {
      f.a = static_cast<std::uint32_t>(canonical);
      changed = true;
    }
  }
  if (!changed) return key;
  // Stacks may have become equal: keep each once (the state is a set).
  State unique;
  std::uint32_t begin = 0;
  for (const std::uint32_t end : key.state_.ends) {
    if (!HasStack(unique, key.state_.frames.data() + begin, end - begin)) {
      unique.frames.insert(unique.frames.end(), key.state_.frames.begin() + begin, key.state_.frames.begin() + end);
      unique.ends.push_back(static_cast<std::uint32_t>(unique.frames.size()));
    }
    begin = end;
  }
  key.state_ = std::move(unique);
  return key;
}

bool JsonMatcher::operator==(const JsonMatcher& other) const {
  if (grammar_ != other.grammar_ || state_.ends.size() != other.state_.ends.size()) return false;
  std::uint32_t begin = 0;
  for (const std::uint32_t end : state_.ends) {
    if (!HasStack(other.state_, state_.frames.data() + begin, end - begin)) return false;
    begin = end;
  }
  return true;
}

std::size_t JsonMatcher::Hash() const {
  std::uint64_t total = reinterpret_cast<std::uintptr_t>(grammar_.get());
  std::uint32_t begin = 0;
  for (const std::uint32_t end : state_.ends) {
    std::uint64_t h = end - begin;
    for (std::uint32_t i = begin; i < end; ++i) {
      std::uint64_t w[2];
      static_assert(sizeof(Frame) == sizeof(w));
      std::memcpy(w, &state_.frames[i], sizeof(w));
      h = Mix(Mix(h, w[0]), w[1]);
    }
    total += h;  // order-independent: the stacks are a set
    begin = end;
  }
  return static_cast<std::size_t>(total);
}

}  // namespace sirocco::engine::structured
