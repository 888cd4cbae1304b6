// Prices, budgets and the per-key ledger of tokens and cost, persisted across
// restarts in a small JSON file that is replaced atomically on every update.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace dsv4::server {

// USD per 1M tokens.
struct Price {
  double input_cache_hit = 0;
  double input_cache_miss = 0;
  double output = 0;
};

class PriceTable {
 public:
  // The DeepSeek V4 launch list prices (deepseek-v4-flash, deepseek-v4-pro).
  static PriceTable defaults();
  // {"model": {"input_cache_hit": x, "input_cache_miss": y, "output": z}, ...};
  // entries override or extend the table. Throws dsv4::Error naming the file.
  void load_file(const std::string& path);
  void set(const std::string& model, const Price& p) { prices_[model] = p; }
  // The model's price; a model without an entry costs nothing.
  Price get(const std::string& model) const;
  const std::map<std::string, Price>& all() const { return prices_; }

 private:
  std::map<std::string, Price> prices_;
};

struct Usage {
  int64_t prompt_cache_hit_tokens = 0;
  int64_t prompt_cache_miss_tokens = 0;
  int64_t completion_tokens = 0;
};

double cost_usd(const Price& p, const Usage& u);

struct Account {
  int64_t requests = 0;
  int64_t prompt_cache_hit_tokens = 0;
  int64_t prompt_cache_miss_tokens = 0;
  int64_t completion_tokens = 0;
  double spent_usd = 0;
};

class Ledger {
 public:
  // path empty: in memory only. Otherwise loads the file if it exists.
  explicit Ledger(std::string path);

  void set_budget(const std::string& key, double usd);
  std::optional<double> budget(const std::string& key) const;
  // False once a key with a budget has spent it.
  bool has_balance(const std::string& key) const;
  // Remaining budget (never negative); nullopt for keys without a budget.
  std::optional<double> remaining(const std::string& key) const;

  void record(const std::string& key, const Usage& usage, double cost);
  Account account(const std::string& key) const;

 private:
  void save_locked() const;

  std::string path_;
  mutable std::mutex mu_;
  std::map<std::string, Account> accounts_;
  std::map<std::string, double> budgets_;
};

}  // namespace dsv4::server
