#include "server/ledger.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fcntl.h>
#include <unistd.h>

#include "util/error.h"

namespace dsv4::server {

PriceTable PriceTable::defaults() {
  PriceTable t;
  t.set("deepseek-v4-flash", {0.028, 0.14, 0.28});
  t.set("deepseek-v4-pro", {0.145, 1.74, 3.48});
  return t;
}

void PriceTable::load_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("cannot open the price file ", path);
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception& e) {
    fail("price file ", path, " is not valid JSON: ", e.what());
  }
  if (!j.is_object()) fail("price file ", path, ": expected an object {model: prices}");
  for (const auto& [model, v] : j.items()) {
    if (!v.is_object()) fail("price file ", path, ": \"", model, "\" must be an object");
    Price p = get(model);
    auto read = [&](const char* key, double* out) {
      if (!v.contains(key)) return;
      if (!v[key].is_number() || v[key].get<double>() < 0)
        fail("price file ", path, ": ", model, ".", key, " must be a non-negative number");
      *out = v[key].get<double>();
    };
    read("input_cache_hit", &p.input_cache_hit);
    read("input_cache_miss", &p.input_cache_miss);
    read("output", &p.output);
    for (const auto& [k, unused] : v.items())
      if (k != "input_cache_hit" && k != "input_cache_miss" && k != "output")
        fail("price file ", path, ": ", model, ": unknown field \"", k,
             "\" (expected input_cache_hit, input_cache_miss, output)");
    prices_[model] = p;
  }
}

Price PriceTable::get(const std::string& model) const {
  auto it = prices_.find(model);
  return it == prices_.end() ? Price{} : it->second;
}

double cost_usd(const Price& p, const Usage& u) {
  return (u.prompt_cache_hit_tokens * p.input_cache_hit +
          u.prompt_cache_miss_tokens * p.input_cache_miss + u.completion_tokens * p.output) /
         1e6;
}

Ledger::Ledger(std::string path) : path_(std::move(path)) {
  if (path_.empty() || !std::filesystem::exists(path_)) return;
  std::ifstream in(path_);
  nlohmann::json j;
  try {
    in >> j;
    for (const auto& [key, a] : j.at("accounts").items()) {
      Account acc;
      acc.requests = a.at("requests").get<int64_t>();
      acc.prompt_cache_hit_tokens = a.at("prompt_cache_hit_tokens").get<int64_t>();
      acc.prompt_cache_miss_tokens = a.at("prompt_cache_miss_tokens").get<int64_t>();
      acc.completion_tokens = a.at("completion_tokens").get<int64_t>();
      acc.spent_usd = a.at("spent_usd").get<double>();
      accounts_[key] = acc;
    }
  } catch (const nlohmann::json::exception& e) {
    fail("ledger file ", path_, " is damaged (", e.what(), "); move it away to start a new ledger");
  }
}

void Ledger::set_budget(const std::string& key, double usd) {
  std::lock_guard<std::mutex> lock(mu_);
  budgets_[key] = usd;
}

std::optional<double> Ledger::budget(const std::string& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = budgets_.find(key);
  if (it == budgets_.end()) return std::nullopt;
  return it->second;
}

std::optional<double> Ledger::remaining(const std::string& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = budgets_.find(key);
  if (it == budgets_.end()) return std::nullopt;
  auto a = accounts_.find(key);
  const double spent = a == accounts_.end() ? 0.0 : a->second.spent_usd;
  return std::max(0.0, it->second - spent);
}

bool Ledger::has_balance(const std::string& key) const {
  auto r = remaining(key);
  return !r || *r > 0.0;
}

void Ledger::record(const std::string& key, const Usage& usage, double cost) {
  std::lock_guard<std::mutex> lock(mu_);
  Account& a = accounts_[key];
  a.requests += 1;
  a.prompt_cache_hit_tokens += usage.prompt_cache_hit_tokens;
  a.prompt_cache_miss_tokens += usage.prompt_cache_miss_tokens;
  a.completion_tokens += usage.completion_tokens;
  a.spent_usd += cost;
  save_locked();
}

Account Ledger::account(const std::string& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = accounts_.find(key);
  return it == accounts_.end() ? Account{} : it->second;
}

void Ledger::save_locked() const {
  if (path_.empty()) return;
  nlohmann::json j;
  j["version"] = 1;
  j["accounts"] = nlohmann::json::object();
  for (const auto& [key, a] : accounts_)
    j["accounts"][key] = {{"requests", a.requests},
                          {"prompt_cache_hit_tokens", a.prompt_cache_hit_tokens},
                          {"prompt_cache_miss_tokens", a.prompt_cache_miss_tokens},
                          {"completion_tokens", a.completion_tokens},
                          {"spent_usd", a.spent_usd}};
  // Write a sibling temp file, fsync it, then rename over the ledger: a crash
  // leaves either the old or the new file, never a torn one.
  const std::string tmp = path_ + ".tmp";
  const std::string text = j.dump(2) + "\n";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) fail("cannot write the ledger file ", tmp);
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = ::write(fd, text.data() + off, text.size() - off);
    if (n <= 0) {
      ::close(fd);
      fail("cannot write the ledger file ", tmp);
    }
    off += static_cast<size_t>(n);
  }
  ::fsync(fd);
  ::close(fd);
  if (std::rename(tmp.c_str(), path_.c_str()) != 0) fail("cannot replace the ledger file ", path_);
}

}  // namespace dsv4::server
