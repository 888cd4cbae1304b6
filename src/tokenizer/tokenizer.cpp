#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"
#include "util/error.h"

namespace dsv4 {
namespace {

using json = nlohmann::json;

// unordered_map<std::string, V> that can be searched with a string_view.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <typename V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

// Pre-tokenizer Split behaviours, as Hugging Face's SplitDelimiterBehavior.
enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct SplitStep {
  Regex regex;
  Behavior behavior;
  bool invert;
};

struct NormalizerStep {
  enum class Kind { kReplace, kPrepend } kind;
  std::optional<Regex> pattern;  // kReplace
  std::string content;           // replacement or prepended text
};

struct AddedToken {
  int32_t id;
  std::string content;
  bool special, lstrip, rstrip, single_word, normalized;
};

// Byte trie over added-token contents for leftmost-longest matching (what the
// Aho-Corasick automaton of Hugging Face does with MatchKind::LeftmostLongest).
class TokenTrie {
 public:
  void insert(std::string_view s, int32_t token_index) {
    if (s.empty()) return;
    int32_t node = 0;
    for (char c : s) {
      const auto b = static_cast<uint8_t>(c);
      int32_t next = -1;
      for (auto [k, child] : nodes_[node].kids)
        if (k == b) next = child;
      if (next < 0) {
        next = static_cast<int32_t>(nodes_.size());
        nodes_[node].kids.push_back({b, next});
        nodes_.emplace_back();
      }
      node = next;
    }
    nodes_[node].token = token_index;
    first_[static_cast<uint8_t>(s[0])] = true;
    empty_ = false;
  }
  bool empty() const { return empty_; }
  bool may_start(uint8_t b) const { return first_[b]; }
  // The longest token that starts at text[pos]: {length, token index}, or {0, -1}.
  std::pair<size_t, int32_t> longest_at(std::string_view text, size_t pos) const {
    int32_t node = 0;
    std::pair<size_t, int32_t> best{0, -1};
    for (size_t i = pos; i < text.size(); ++i) {
      const auto b = static_cast<uint8_t>(text[i]);
      int32_t next = -1;
      for (auto [k, child] : nodes_[node].kids)
        if (k == b) {
          next = child;
          break;
        }
      if (next < 0) break;
      node = next;
      if (nodes_[node].token >= 0) best = {i + 1 - pos, nodes_[node].token};
    }
    return best;
  }

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> kids;
    int32_t token = -1;
  };
  std::vector<Node> nodes_{1};
  std::array<bool, 256> first_{};
  bool empty_ = true;
};

// Open-addressing map (id, id) → (merge rank, merged id): the BPE inner loop
// looks a pair up for every candidate merge.
class PairMap {
 public:
  struct Entry {
    uint64_t key;
    int32_t rank, id;
  };
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    slots_.assign(cap, Entry{kEmpty, 0, 0});
    mask_ = cap - 1;
  }
  // Later duplicates overwrite earlier ones, as when Hugging Face collects
  // the merges into a HashMap.
  void insert(int32_t a, int32_t b, int32_t rank, int32_t id) {
    const uint64_t key = make_key(a, b);
    for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].key == kEmpty || slots_[i].key == key) {
        slots_[i] = {key, rank, id};
        return;
      }
    }
  }
  const Entry* find(int32_t a, int32_t b) const {
    const uint64_t key = make_key(a, b);
    for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return &slots_[i];
      if (slots_[i].key == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  static uint64_t make_key(int32_t a, int32_t b) {
    return (uint64_t{static_cast<uint32_t>(a)} << 32) | static_cast<uint32_t>(b);
  }
  static uint64_t hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
  }
  std::vector<Entry> slots_{16, Entry{kEmpty, 0, 0}};
  size_t mask_ = 15;
};

// The GPT-2 byte ↔ unicode table of the ByteLevel pre-tokenizer/decoder:
// printable bytes map to themselves, the others to U+0100 onwards.
std::array<char32_t, 256> byte_to_unicode() {
  std::array<char32_t, 256> table{};
  std::array<bool, 256> printable{};
  for (int b = '!'; b <= '~'; ++b) printable[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) table[b] = printable[b] ? char32_t(b) : next++;
  return table;
}

// The GPT-2 pre-tokenizer regex ByteLevel uses when `use_regex` is true.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open ", path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool flag(const json& obj, const char* key, bool fallback) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  return it->get<bool>();
}

}  // namespace

struct TokenizerImpl {
  std::string source;  // file name for error messages

  // Vocabulary.
  StringMap<int32_t> vocab;  // model vocab
  StringMap<int32_t> added_by_content;
  std::vector<std::string> id_to_token;  // "" for holes
  std::vector<std::string> id_to_bytes;  // decoded bytes of each token
  std::vector<uint8_t> id_flags;         // kValid | kSpecial
  static constexpr uint8_t kValid = 1, kSpecial = 2;
  int32_t bos = -1, eos = -1;

  // Added tokens, matched on the raw text (normalized == false) and on the
  // normalized text (normalized == true).
  std::vector<AddedToken> added;
  TokenTrie raw_trie, normalized_trie;
  std::optional<Regex> word_char, space_char;  // for single_word / lstrip / rstrip

  std::vector<NormalizerStep> normalizer;
  std::vector<SplitStep> pre_splits;
  bool byte_level = false;  // ByteLevel pre-tokenizer (last step)
  bool prefix_space = false;
  std::optional<Regex> byte_level_regex;

  // BPE model.
  PairMap merges;
  std::array<int32_t, 256> byte_to_id{};  // byte-level: id of each byte's symbol, -1 if none
  std::optional<int32_t> unk_id;
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;

  // Word cache: BPE of a pre-token depends only on its bytes.
  mutable std::mutex cache_mu;
  mutable StringMap<std::vector<int32_t>> cache;
  static constexpr size_t kCacheCapacity = 200000, kCacheMaxWord = 256;

  struct Scratch {
    std::vector<Match> matches;
    std::vector<std::string_view> pieces, next_pieces;
    std::vector<std::pair<std::pair<uint32_t, uint32_t>, bool>> parts;
    std::vector<std::string> owned;  // pieces that needed a prefix space
  };

  // --- encoding ---------------------------------------------------------

  void encode(std::string_view text, bool use_added, std::vector<int32_t>& ids) const {
    if (size_t bad = utf8::find_invalid(text); bad != std::string_view::npos)
      fail("text to tokenize is not valid UTF-8 (invalid byte 0x", std::hex,
           static_cast<int>(static_cast<uint8_t>(text[bad])), std::dec, " at offset ", bad, ")");
    Scratch scratch;
    auto on_normalized = [&](std::string_view segment) {
      pre_tokenize_and_bpe(segment, ids, scratch);
    };
    auto on_raw = [&](std::string_view segment) {
      std::string normalized_storage;
      std::string_view normalized = segment;
      if (!normalizer.empty()) {
        normalized_storage = normalize(segment);
        normalized = normalized_storage;
      }
      if (use_added && !normalized_trie.empty())
        split_added(normalized, normalized_trie, ids, on_normalized);
      else if (!normalized.empty())
        on_normalized(normalized);
    };
    if (use_added && !raw_trie.empty())
      split_added(text, raw_trie, ids, on_raw);
    else if (!text.empty())
      on_raw(text);
  }

  // Hugging Face AddedVocabulary::find_matches: matched tokens go to `ids`,
  // the non-empty text between them to `on_gap`.
  template <typename Fn>
  void split_added(std::string_view text, const TokenTrie& trie, std::vector<int32_t>& ids,
                   Fn&& on_gap) const {
    const auto* s = reinterpret_cast<const uint8_t*>(text.data());
    const size_t n = text.size();
    size_t start_offset = 0;  // end of the previous match (after rstrip)
    size_t pos = 0;
    while (pos < n) {
      if (!trie.may_start(s[pos])) {
        ++pos;
        continue;
      }
      auto [len, index] = trie.longest_at(text, pos);
      if (index < 0) {
        ++pos;
        continue;
      }
      const AddedToken& tok = added[index];
      size_t start = pos, stop = pos + len;
      pos = stop;                          // the automaton resumes after the raw match
      if (start < start_offset) continue;  // inside spaces an rstrip already took
      if (tok.single_word) {
        const bool start_space = start == 0 || !ends_with_word(text.substr(0, start));
        const bool stop_space = stop == n || !starts_with_word(text.substr(stop));
        if (!start_space || !stop_space) continue;
      }
      if (tok.lstrip)
        start = std::max(start_offset, start - trailing_spaces(text.substr(0, start)));
      if (tok.rstrip) stop += leading_spaces(text.substr(stop));
      if (start_offset < start) on_gap(text.substr(start_offset, start - start_offset));
      ids.push_back(tok.id);
      start_offset = stop;
    }
    if (start_offset < n) on_gap(text.substr(start_offset));
  }

  bool ends_with_word(std::string_view s) const {
    // The last character: step back over continuation bytes.
    size_t i = s.size();
    while (i > 0 && (static_cast<uint8_t>(s[i - 1]) & 0xC0) == 0x80) --i;
    if (i > 0) --i;
    return matches_whole(*word_char, s.substr(i));
  }
  bool starts_with_word(std::string_view s) const {
    if (s.empty()) return false;
    return matches_whole(*word_char, s.substr(0, utf8::char_len(static_cast<uint8_t>(s[0]))));
  }
  size_t trailing_spaces(std::string_view s) const {
    size_t n = 0;
    while (n < s.size()) {
      size_t i = s.size() - n;
      size_t j = i;
      while (j > 0 && (static_cast<uint8_t>(s[j - 1]) & 0xC0) == 0x80) --j;
      if (j > 0) --j;
      if (!matches_whole(*space_char, s.substr(j, i - j))) break;
      n += i - j;
    }
    return n;
  }
  size_t leading_spaces(std::string_view s) const {
    size_t n = 0;
    while (n < s.size()) {
      const size_t len = utf8::char_len(static_cast<uint8_t>(s[n]));
      if (!matches_whole(*space_char, s.substr(n, len))) break;
      n += len;
    }
    return n;
  }
  static bool matches_whole(const Regex& re, std::string_view ch) {
    std::vector<Match> m;
    re.find_all(ch, m);
    return !m.empty() && m[0].start == 0 && m[0].end == ch.size();
  }

  std::string normalize(std::string_view text) const {
    std::string s(text);
    std::vector<Match> m;
    for (const NormalizerStep& step : normalizer) {
      if (step.kind == NormalizerStep::Kind::kPrepend) {
        if (!s.empty()) s = step.content + s;
        continue;
      }
      step.pattern->find_all(s, m);
      if (m.empty()) continue;
      std::string out;
      size_t prev = 0;
      for (const Match& x : m) {
        out.append(s, prev, x.start - prev);
        out += step.content;
        prev = x.end;
      }
      out.append(s, prev);
      s = std::move(out);
    }
    return s;
  }

  void pre_tokenize_and_bpe(std::string_view text, std::vector<int32_t>& ids, Scratch& sc) const {
    sc.pieces.assign(1, text);
    for (const SplitStep& step : pre_splits) {
      sc.next_pieces.clear();
      for (std::string_view piece : sc.pieces) split(step, piece, sc);
      std::swap(sc.pieces, sc.next_pieces);
    }
    if (prefix_space) {
      sc.owned.clear();
      sc.owned.reserve(sc.pieces.size());
      for (std::string_view& piece : sc.pieces) {
        if (piece.empty() || piece[0] == ' ') continue;
        sc.owned.push_back(" " + std::string(piece));
        piece = sc.owned.back();
      }
    }
    if (byte_level_regex) {
      sc.next_pieces.clear();
      for (std::string_view piece : sc.pieces) split_isolated(*byte_level_regex, piece, sc);
      std::swap(sc.pieces, sc.next_pieces);
    }
    for (std::string_view piece : sc.pieces) bpe(piece, ids);
  }

  void split_isolated(const Regex& re, std::string_view piece, Scratch& sc) const {
    re.find_all(piece, sc.matches);
    size_t prev = 0;
    for (const Match& m : sc.matches) {
      if (prev < m.start) sc.next_pieces.push_back(piece.substr(prev, m.start - prev));
      if (m.start < m.end) sc.next_pieces.push_back(piece.substr(m.start, m.end - m.start));
      prev = m.end;
    }
    if (prev < piece.size()) sc.next_pieces.push_back(piece.substr(prev));
  }

  // Hugging Face NormalizedString::split with the Regex pattern's find_matches.
  void split(const SplitStep& step, std::string_view piece, Scratch& sc) const {
    if (step.behavior == Behavior::kIsolated) return split_isolated(step.regex, piece, sc);
    step.regex.find_all(piece, sc.matches);
    auto& parts = sc.parts;  // ((start, end), is_match) covering the piece
    parts.clear();
    uint32_t prev = 0;
    for (const Match& m : sc.matches) {
      if (prev != m.start) parts.push_back({{prev, m.start}, false});
      parts.push_back({{m.start, m.end}, true});
      prev = m.end;
    }
    if (prev != piece.size()) parts.push_back({{prev, static_cast<uint32_t>(piece.size())}, false});
    if (step.invert)
      for (auto& p : parts) p.second = !p.second;
    // Each output entry: (range, remove).
    std::vector<std::pair<std::pair<uint32_t, uint32_t>, bool>> out;
    bool previous_match = false;
    switch (step.behavior) {
      case Behavior::kIsolated:
        break;
      case Behavior::kRemoved:
        out = parts;
        break;
      case Behavior::kContiguous:
        for (auto& [range, is_match] : parts) {
          if (is_match == previous_match && !out.empty())
            out.back().first.second = range.second;
          else
            out.push_back({range, false});
          previous_match = is_match;
        }
        break;
      case Behavior::kMergedWithPrevious:
        for (auto& [range, is_match] : parts) {
          if (is_match && !previous_match && !out.empty())
            out.back().first.second = range.second;
          else
            out.push_back({range, false});
          previous_match = is_match;
        }
        break;
      case Behavior::kMergedWithNext:
        for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
          if (it->second && !previous_match && !out.empty())
            out.back().first.first = it->first.first;
          else
            out.push_back({it->first, false});
          previous_match = it->second;
        }
        std::reverse(out.begin(), out.end());
        break;
    }
    for (auto& [range, remove] : out)
      if (!remove && range.first < range.second)
        sc.next_pieces.push_back(piece.substr(range.first, range.second - range.first));
  }

  // BPE of one pre-token (raw bytes when byte-level), with the word cache.
  void bpe(std::string_view word, std::vector<int32_t>& ids) const {
    if (word.empty()) return;
    const bool cacheable = word.size() <= kCacheMaxWord;
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_mu);
      auto it = cache.find(word);
      if (it != cache.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> out;
    bpe_uncached(word, out);
    ids.insert(ids.end(), out.begin(), out.end());
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_mu);
      if (cache.size() >= kCacheCapacity) cache.clear();
      cache.emplace(std::string(word), std::move(out));
    }
  }

  std::string symbol_string(std::string_view word) const {
    if (!byte_level) return std::string(word);
    static const std::array<char32_t, 256> table = byte_to_unicode();
    std::string s;
    for (char c : word) utf8::append(s, table[static_cast<uint8_t>(c)]);
    return s;
  }

  void bpe_uncached(std::string_view word, std::vector<int32_t>& out) const {
    if (ignore_merges) {
      auto it = vocab.find(symbol_string(word));
      if (it != vocab.end()) {
        out.push_back(it->second);
        return;
      }
    }
    // Initial symbols: one per byte (byte-level) or per character.
    std::vector<int32_t> sym;
    sym.reserve(word.size());
    bool last_unk = false;
    auto push_unknown = [&](std::string_view ch) {
      if (byte_fallback) {
        std::vector<int32_t> bytes;
        for (char c : ch) {
          char name[8];
          std::snprintf(name, sizeof(name), "<0x%02X>", static_cast<uint8_t>(c));
          auto it = vocab.find(name);
          if (it == vocab.end()) break;
          bytes.push_back(it->second);
        }
        if (bytes.size() == ch.size()) {
          sym.insert(sym.end(), bytes.begin(), bytes.end());
          last_unk = false;
          return;
        }
      }
      if (!unk_id) return;  // Hugging Face drops it silently
      if (fuse_unk && last_unk) return;
      sym.push_back(*unk_id);
      last_unk = true;
    };
    const auto* s = reinterpret_cast<const uint8_t*>(word.data());
    if (byte_level) {
      for (size_t i = 0; i < word.size(); ++i) {
        const int32_t id = byte_to_id[s[i]];
        if (id >= 0) {
          sym.push_back(id);
          last_unk = false;
        } else {
          push_unknown(symbol_string(word.substr(i, 1)));
        }
      }
    } else {
      for (size_t i = 0; i < word.size();) {
        const size_t len = utf8::char_len(s[i]);
        auto it = vocab.find(std::string(word.substr(i, len)));
        if (it != vocab.end()) {
          sym.push_back(it->second);
          last_unk = false;
        } else {
          push_unknown(word.substr(i, len));
        }
        i += len;
      }
    }
    merge(sym, out);
  }

  // Applies merges lowest rank first (leftmost among equal ranks), with a
  // linked list of symbols and a heap of candidate pairs, as Hugging Face's
  // Word::merge_all does.
  void merge(const std::vector<int32_t>& sym, std::vector<int32_t>& out) const {
    const int n = static_cast<int>(sym.size());
    if (n <= 1) {
      out.insert(out.end(), sym.begin(), sym.end());
      return;
    }
    struct Symbol {
      int32_t id;
      int prev, next;
      bool alive;
    };
    std::vector<Symbol> list(n);
    for (int i = 0; i < n; ++i) list[i] = {sym[i], i - 1, i + 1 < n ? i + 1 : -1, true};
    struct Candidate {
      int32_t rank;
      int pos;
      int32_t id;
      bool operator>(const Candidate& o) const {
        return rank != o.rank ? rank > o.rank : pos > o.pos;
      }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
    auto consider = [&](int pos) {
      const int next = list[pos].next;
      if (next < 0) return;
      if (const PairMap::Entry* e = merges.find(list[pos].id, list[next].id))
        heap.push({e->rank, pos, e->id});
    };
    for (int i = 0; i + 1 < n; ++i) consider(i);
    while (!heap.empty()) {
      const Candidate top = heap.top();
      heap.pop();
      Symbol& left = list[top.pos];
      if (!left.alive || left.next < 0) continue;
      Symbol& right = list[left.next];
      const PairMap::Entry* e = merges.find(left.id, right.id);
      if (!e || e->id != top.id) continue;  // stale candidate
      left.id = top.id;
      right.alive = false;
      left.next = right.next;
      if (right.next >= 0) list[right.next].prev = top.pos;
      if (left.prev >= 0) consider(left.prev);
      consider(top.pos);
    }
    for (int i = 0; i >= 0; i = list[i].next) out.push_back(list[i].id);
  }
};

namespace {

// model.vocab and model.merges hold ~128k entries each: building them as
// JSON objects (a std::map) and then copying them would dominate load time,
// so a parser callback captures them straight into these tables and drops
// them from the document.
struct BigTables {
  StringMap<int32_t> vocab;
  bool saw_vocab = false;
  std::vector<std::string> merges;  // "a b", or a + b with split_at for [a, b]
  std::vector<size_t> split_at;     // only for the [a, b] form
  std::string bad_merge;
  size_t bad_merge_rank = 0;
};

json parse_tokenizer_json(const std::string& text, BigTables& big) {
  std::vector<std::string> path(8);  // last key seen at each depth
  std::vector<std::string> pair;     // elements of the current [a, b] merge
  auto in = [&](const char* key) { return path[1] == "model" && path[2] == key; };
  auto fail_merge = [&](const json& v) {
    if (big.bad_merge.empty()) big.bad_merge = v.dump(), big.bad_merge_rank = big.merges.size();
  };
  json::parser_callback_t cb = [&](int depth, json::parse_event_t event, json& parsed) -> bool {
    using E = json::parse_event_t;
    if (event == E::key) {
      if (depth < static_cast<int>(path.size())) path[depth] = parsed.get<std::string>();
      if (depth == 3 && in("vocab")) {
        big.saw_vocab = true;
        return false;  // the value arrives next, as a value event at depth 3
      }
      return true;
    }
    if (depth == 3 && in("vocab") && event == E::value) {
      if (!parsed.is_number_integer() || parsed.get<int64_t>() < 0 ||
          parsed.get<int64_t>() >= INT32_MAX)
        throw Error(str_cat("model.vocab[\"", path[3], "\"] is not a valid id: ", parsed.dump()));
      big.vocab.emplace(path[3], static_cast<int32_t>(parsed.get<int64_t>()));
      return true;
    }
    if (in("merges")) {
      if (depth == 3 && event == E::value) {
        if (parsed.is_string())
          big.merges.push_back(parsed.get<std::string>());
        else
          fail_merge(parsed);
        return false;
      }
      if (depth == 3 && event == E::array_start) {
        pair.clear();
        return true;
      }
      if (depth == 4 && event == E::value) {
        if (parsed.is_string()) pair.push_back(parsed.get<std::string>());
        return false;
      }
      if (depth == 3 && event == E::array_end) {
        if (pair.size() != 2) {
          fail_merge(json(pair));
        } else {
          if (big.split_at.size() != big.merges.size()) fail_merge(json(pair));
          big.split_at.push_back(pair[0].size());
          big.merges.push_back(pair[0] + pair[1]);
        }
        return false;
      }
    }
    return true;
  };
  return json::parse(text, cb);
}

Behavior parse_behavior(const std::string& b, const std::string& where) {
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  fail(where, ": unknown Split behavior '", b, "'");
}

// {"Regex": "..."} or {"String": "..."} → Regex.
Regex parse_pattern(const json& pattern, const std::string& where) {
  if (pattern.contains("Regex")) return Regex(pattern["Regex"].get<std::string>(), where);
  if (pattern.contains("String"))
    return Regex(regex_escape(pattern["String"].get<std::string>()), where);
  fail(where, ": pattern must be {\"Regex\": ...} or {\"String\": ...}, got ", pattern.dump());
}

void parse_normalizer(const json& n, TokenizerImpl& t) {
  if (n.is_null()) return;
  const std::string type = n.value("type", "");
  const std::string where = t.source + ": normalizer " + type;
  if (type == "Sequence") {
    for (const json& child : n.at("normalizers")) parse_normalizer(child, t);
  } else if (type == "Replace") {
    t.normalizer.push_back({NormalizerStep::Kind::kReplace, parse_pattern(n.at("pattern"), where),
                            n.at("content").get<std::string>()});
  } else if (type == "Prepend") {
    t.normalizer.push_back(
        {NormalizerStep::Kind::kPrepend, std::nullopt, n.at("prepend").get<std::string>()});
  } else {
    fail(t.source, ": normalizer type '", type,
         "' is not supported (supported: Sequence, Replace, Prepend)");
  }
}

void parse_pre_tokenizer(const json& p, TokenizerImpl& t) {
  if (p.is_null()) return;
  const std::string type = p.value("type", "");
  const std::string where = t.source + ": pre_tokenizer " + type;
  if (t.byte_level)
    fail(t.source, ": pre_tokenizer ", type,
         " follows ByteLevel; only a final ByteLevel step is supported");
  if (type == "Sequence") {
    for (const json& child : p.at("pretokenizers")) parse_pre_tokenizer(child, t);
  } else if (type == "Split") {
    t.pre_splits.push_back({parse_pattern(p.at("pattern"), where),
                            parse_behavior(p.at("behavior").get<std::string>(), where),
                            flag(p, "invert", false)});
  } else if (type == "Digits") {
    t.pre_splits.push_back(
        {Regex("\\p{N}", where),
         flag(p, "individual_digits", false) ? Behavior::kIsolated : Behavior::kContiguous, false});
  } else if (type == "ByteLevel") {
    t.byte_level = true;
    t.prefix_space = flag(p, "add_prefix_space", true);
    if (flag(p, "use_regex", true)) t.byte_level_regex.emplace(kGpt2Pattern, where);
  } else {
    fail(t.source, ": pre_tokenizer type '", type,
         "' is not supported (supported: Sequence, Split, Digits, ByteLevel)");
  }
}

void parse_decoder(const json& d, const TokenizerImpl& t) {
  const std::string type = d.is_null() ? "null" : d.value("type", "");
  if (type == "ByteLevel") return;
  if (type == "Sequence") {
    for (const json& child : d.at("decoders")) parse_decoder(child, t);
    return;
  }
  fail(t.source, ": decoder type '", type, "' is not supported (supported: ByteLevel)");
}

void parse_model(const json& m, BigTables& big, TokenizerImpl& t) {
  const std::string type = m.value("type", "BPE");
  if (type != "BPE") fail(t.source, ": model type '", type, "' is not supported (only BPE)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (m.contains(key) && !m[key].is_null() && !m[key].get<std::string>().empty())
      fail(t.source, ": BPE ", key, " is not supported");
  if (m.contains("dropout") && !m["dropout"].is_null() && m["dropout"].get<double>() != 0.0)
    fail(t.source, ": BPE dropout is a training feature and is not supported");
  t.fuse_unk = flag(m, "fuse_unk", false);
  t.byte_fallback = flag(m, "byte_fallback", false);
  t.ignore_merges = flag(m, "ignore_merges", false);

  if (!big.saw_vocab) fail(t.source, ": model.vocab is missing or not an object {token: id}");
  t.vocab = std::move(big.vocab);
  if (m.contains("unk_token") && !m["unk_token"].is_null()) {
    const std::string unk = m["unk_token"].get<std::string>();
    auto it = t.vocab.find(unk);
    if (it == t.vocab.end()) fail(t.source, ": unk_token '", unk, "' is not in the vocab");
    t.unk_id = it->second;
  }

  if (!big.bad_merge.empty())
    fail(t.source, ": merge ", big.bad_merge_rank, " must be \"a b\" or [\"a\", \"b\"], got ",
         big.bad_merge);
  const size_t count = big.merges.size();
  t.merges.reserve(count);
  std::string joined;
  for (size_t rank = 0; rank < count; ++rank) {
    const std::string& line = big.merges[rank];
    // "a b" (or [a, b], captured as "a" + '\0' + "b" would be ambiguous, so
    // arrays are stored with their split position).
    const size_t sp = big.split_at.empty() ? line.find(' ') : big.split_at[rank];
    if (sp == std::string::npos ||
        (big.split_at.empty() && line.find(' ', sp + 1) != std::string::npos))
      fail(t.source, ": merge ", rank, " '", line, "' is not two tokens separated by a space");
    const std::string_view a = std::string_view(line).substr(0, sp);
    const std::string_view b = std::string_view(line).substr(sp + (big.split_at.empty() ? 1 : 0));
    joined.assign(a);
    joined += b;
    auto ia = t.vocab.find(a), ib = t.vocab.find(b), iab = t.vocab.find(std::string_view(joined));
    if (ia == t.vocab.end() || ib == t.vocab.end() || iab == t.vocab.end())
      fail(t.source, ": merge ", rank, " (", a, " ", b, ") uses a token missing from the vocab");
    t.merges.insert(ia->second, ib->second, static_cast<int32_t>(rank), iab->second);
  }
}

// bos_token / eos_token of tokenizer_config.json: a string or {"content": ...}.
int32_t config_token(const json& config, const char* key, const Tokenizer& tok) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return -1;
  std::string content;
  if (it->is_string()) {
    content = it->get<std::string>();
  } else if (it->is_object() && it->contains("content")) {
    content = (*it)["content"].get<std::string>();
  } else {
    return -1;
  }
  return tok.token_id(content).value_or(-1);
}

}  // namespace

Tokenizer::Tokenizer() : impl_(std::make_unique<TokenizerImpl>()) {}
Tokenizer::~Tokenizer() = default;

std::shared_ptr<const Tokenizer> Tokenizer::load(const std::string& dir_or_file) {
  namespace fs = std::filesystem;
  fs::path json_path = dir_or_file, config_path;
  if (fs::is_directory(json_path)) {
    json_path /= "tokenizer.json";
    if (!fs::exists(json_path)) fail("no tokenizer.json in ", dir_or_file);
  } else if (!fs::exists(json_path)) {
    fail("tokenizer file or folder ", dir_or_file, " does not exist");
  }
  config_path = json_path.parent_path() / "tokenizer_config.json";

  std::shared_ptr<Tokenizer> tok(new Tokenizer());
  TokenizerImpl& t = *tok->impl_;
  t.source = json_path.string();
  json doc;
  BigTables big;
  std::unordered_set<std::string> special_contents;
  try {
    doc = parse_tokenizer_json(read_file(json_path), big);
  } catch (const json::exception& e) {
    fail(t.source, ": invalid JSON: ", e.what());
  } catch (const Error& e) {
    fail(t.source, ": ", e.what());
  }

  try {
    parse_model(doc.at("model"), big, t);
    parse_normalizer(doc.value("normalizer", json()), t);
    parse_pre_tokenizer(doc.value("pre_tokenizer", json()), t);
    parse_decoder(doc.value("decoder", json()), t);

    if (doc.contains("added_tokens") && !doc["added_tokens"].is_null()) {
      // Hugging Face (tokenizers 0.23) ignores the stored ids and assigns them
      // again in file order: a content already added or in the vocab keeps
      // that id, any other takes the next id counting from the vocab size. For
      // a file it wrote itself this gives the stored ids.
      int32_t next_id = static_cast<int32_t>(t.vocab.size());
      std::unordered_map<int32_t, size_t> index_of_id;
      for (const json& a : doc["added_tokens"]) {
        AddedToken tokn;
        tokn.content = a.at("content").get<std::string>();
        tokn.special = flag(a, "special", false);
        tokn.lstrip = flag(a, "lstrip", false);
        tokn.rstrip = flag(a, "rstrip", false);
        tokn.single_word = flag(a, "single_word", false);
        tokn.normalized = flag(a, "normalized", !tokn.special);
        if (tokn.content.empty()) continue;  // Hugging Face skips these
        if (utf8::find_invalid(tokn.content) != std::string_view::npos)
          fail(t.source, ": added token ", a.value("id", -1), " is not valid UTF-8");
        if (auto it = t.added_by_content.find(tokn.content); it != t.added_by_content.end())
          tokn.id = it->second;
        else if (auto v = t.vocab.find(tokn.content); v != t.vocab.end())
          tokn.id = v->second;
        else
          tokn.id = next_id++;
        t.added_by_content[tokn.content] = tokn.id;
        if (tokn.special) special_contents.insert(tokn.content);
        if (auto it = index_of_id.find(tokn.id); it != index_of_id.end()) {
          t.added[it->second] = std::move(tokn);  // a later definition replaces the flags
        } else {
          index_of_id[tokn.id] = t.added.size();
          t.added.push_back(std::move(tokn));
        }
      }
    }
  } catch (const json::exception& e) {
    fail(t.source, ": unexpected structure: ", e.what());
  }

  // Id tables.
  int32_t max_id = -1;
  for (const auto& [s, id] : t.vocab) max_id = std::max(max_id, id);
  for (const AddedToken& a : t.added) max_id = std::max(max_id, a.id);
  t.id_to_token.assign(max_id + 1, std::string());
  t.id_flags.assign(max_id + 1, 0);
  for (const auto& [s, id] : t.vocab) {
    t.id_to_token[id] = s;
    t.id_flags[id] = TokenizerImpl::kValid;
  }
  bool any_strip = false;
  for (size_t i = 0; i < t.added.size(); ++i) {
    const AddedToken& a = t.added[i];
    // A normalized token is matched, and decoded, as its normalized content.
    const std::string form =
        a.normalized && !t.normalizer.empty() ? t.normalize(a.content) : a.content;
    t.id_to_token[a.id] = form;
    t.id_flags[a.id] = TokenizerImpl::kValid;
    any_strip |= a.lstrip || a.rstrip || a.single_word;
    (a.normalized ? t.normalized_trie : t.raw_trie).insert(form, static_cast<int32_t>(i));
  }
  // Hugging Face decides `special` by the token's string: any id whose string
  // is the content of a special added token is skipped by
  // decode(skip_special_tokens), a vocab id included.
  for (size_t id = 0; id < t.id_to_token.size(); ++id)
    if ((t.id_flags[id] & TokenizerImpl::kValid) && special_contents.count(t.id_to_token[id]))
      t.id_flags[id] |= TokenizerImpl::kSpecial;
  if (any_strip) {
    // Rust's char::is_alphanumeric (+ '_') and char::is_whitespace.
    t.word_char.emplace("[\\p{Alphabetic}\\p{N}_]", t.source + ": single_word");
    t.space_char.emplace("\\s", t.source + ": lstrip/rstrip");
  }

  // Byte-level symbols and decoded bytes.
  const std::array<char32_t, 256> b2u = byte_to_unicode();
  std::vector<int> u2b(*std::max_element(b2u.begin(), b2u.end()) + 1, -1);
  for (int b = 0; b < 256; ++b) u2b[b2u[b]] = b;
  t.byte_to_id.fill(-1);
  if (t.byte_level) {
    for (int b = 0; b < 256; ++b) {
      std::string s;
      utf8::append(s, b2u[b]);
      auto it = t.vocab.find(s);
      if (it != t.vocab.end()) t.byte_to_id[b] = it->second;
    }
  }
  t.id_to_bytes.resize(t.id_to_token.size());
  for (size_t id = 0; id < t.id_to_token.size(); ++id) {
    const std::string& s = t.id_to_token[id];
    // ByteLevel decoder: map every character back to its byte; a token with a
    // character outside the table (e.g. an added token) keeps its own bytes.
    std::string bytes;
    bool all_mapped = true;
    for (size_t i = 0; i < s.size();) {
      size_t len;
      const char32_t cp = utf8::decode(reinterpret_cast<const uint8_t*>(s.data()) + i, &len);
      if (cp >= u2b.size() || u2b[cp] < 0) {
        all_mapped = false;
        break;
      }
      bytes += static_cast<char>(u2b[cp]);
      i += len;
    }
    t.id_to_bytes[id] = all_mapped ? std::move(bytes) : s;
  }

  // BOS/EOS.
  if (fs::exists(config_path)) {
    json config;
    try {
      config = json::parse(read_file(config_path));
    } catch (const json::exception& e) {
      fail(config_path.string(), ": invalid JSON: ", e.what());
    }
    t.bos = config_token(config, "bos_token", *tok);
    t.eos = config_token(config, "eos_token", *tok);
  } else {
    auto first_special = [&](std::initializer_list<const char*> names) {
      for (const char* name : names) {
        auto it = t.added_by_content.find(name);
        if (it != t.added_by_content.end() && tok->is_special(it->second)) return it->second;
      }
      return -1;
    };
    t.bos =
        first_special({"<｜begin▁of▁sentence｜>", "<s>", "<|begin_of_text|>", "<|startoftext|>"});
    t.eos = first_special({"<｜end▁of▁sentence｜>", "</s>", "<|end_of_text|>", "<|endoftext|>"});
  }
  return tok;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  impl_->encode(text, true, ids);
  return ids;
}

std::vector<int32_t> Tokenizer::encode_without_added_tokens(std::string_view text) const {
  std::vector<int32_t> ids;
  impl_->encode(text, false, ids);
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (!is_valid_id(id)) continue;
    if (skip_special_tokens && is_special(id)) continue;
    bytes += impl_->id_to_bytes[id];
  }
  return utf8_lossy(bytes);
}

std::string Tokenizer::token_string(int32_t id) const {
  if (!is_valid_id(id))
    fail("token id ", id, " is not in the vocabulary (", impl_->source, ", vocab size ",
         vocab_size(), ")");
  return impl_->id_to_token[id];
}

std::string Tokenizer::token_bytes(int32_t id) const {
  return is_valid_id(id) ? impl_->id_to_bytes[id] : std::string();
}

std::optional<int32_t> Tokenizer::token_id(std::string_view token) const {
  if (auto it = impl_->added_by_content.find(token); it != impl_->added_by_content.end())
    return it->second;
  if (auto it = impl_->vocab.find(token); it != impl_->vocab.end()) return it->second;
  return std::nullopt;
}

bool Tokenizer::is_valid_id(int32_t id) const {
  return id >= 0 && id < vocab_size() && (impl_->id_flags[id] & TokenizerImpl::kValid);
}

bool Tokenizer::is_special(int32_t id) const {
  return is_valid_id(id) && (impl_->id_flags[id] & TokenizerImpl::kSpecial);
}

int32_t Tokenizer::vocab_size() const {
  return static_cast<int32_t>(impl_->id_to_token.size());
}
int32_t Tokenizer::bos_id() const {
  return impl_->bos;
}
int32_t Tokenizer::eos_id() const {
  return impl_->eos;
}

StreamingDetokenizer::StreamingDetokenizer(std::shared_ptr<const Tokenizer> tok,
                                           bool skip_special_tokens)
    : tok_(std::move(tok)), skip_special_(skip_special_tokens) {
  if (!tok_) fail("StreamingDetokenizer needs a tokenizer");
}

std::string StreamingDetokenizer::push(int32_t id) {
  if (!tok_->is_valid_id(id) || (skip_special_ && tok_->is_special(id))) return {};
  pending_ += tok_->token_bytes(id);
  // Emit everything except a trailing proper prefix of a valid sequence: the
  // lossy conversion of the bytes before it cannot change, while the prefix
  // may still be completed (or turn out invalid) with the next token.
  const auto* s = reinterpret_cast<const uint8_t*>(pending_.data());
  const size_t n = pending_.size();
  size_t i = 0;
  while (i < n) {
    const utf8::Step st = utf8::step(s + i, n - i);
    if (st.status == utf8::Status::kTruncated) break;
    i += st.len;
  }
  std::string out = utf8_lossy(std::string_view(pending_).substr(0, i));
  pending_.erase(0, i);
  return out;
}

std::string StreamingDetokenizer::flush() {
  std::string out = utf8_lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace dsv4
