#include "graphs/graph.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <set>

#include "common/text.hpp"
#include "common/yaml_reader.hpp"

namespace npusim::graphs {

int64_t TensorDesc::elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

const TensorDesc& Graph::tensor(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return t;
  throw InternalError("graph " + this->name + " has no tensor " + name);
}

bool Graph::has_tensor(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return true;
  return false;
}

int Graph::producer(const std::string& tensor) const {
  for (size_t i = 0; i < ops.size(); ++i)
    for (const auto& [role, t] : ops[i].outputs)
      if (t == tensor) return static_cast<int>(i);
  return -1;
}

std::string shape_string(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

const std::vector<OpKindSpec>& op_kinds() {
  using J = nlohmann::json;
  static const std::vector<OpKindSpec> kKinds{
      {"gemm", "C = A x B on the cube cores", {{"a"}, {"b"}}, {{"c"}}, {}},
      {"gating_score", "router scores from logits", {{"logits"}}, {{"scores"}},
       {{"score", "sigmoid|softmax|sqrtsoftplus", J("sigmoid")}}},
      {"topk", "stable top-k of the (biased) scores, optionally group-limited; gathers the unbiased scores",
       {{"scores"}, {"bias", true}}, {{"ids"}, {"weights"}},
       {{"groups", "int", J(1)}, {"topk_groups", "int", J(1)}, {"group_select", "top2sum|max", J("top2sum")}}},
      {"hash_topk", "experts from a token-id table (V4's first layers); gathers the unbiased scores",
       {{"scores"}, {"input_ids"}, {"tid2eid"}}, {{"ids"}, {"weights"}}, {}},
      {"normalize", "routing weights: divide by the sum + eps (renormalize), times route_scale", {{"weights"}},
       {{"weights"}},
       {{"renormalize", "bool", J(true)}, {"eps", "double", J(1e-20)}, {"route_scale", "double", J(1.0)}}},
      {"routing_sort", "stable sort of the flat entries by expert: expanded row index and tokens per expert",
       {{"ids"}}, {{"row_idx"}, {"expert_tokens"}}, {}},
      {"permute", "gathers token rows (and their weights) into expert order", {{"x"}, {"row_idx"}, {"weights", true}},
       {{"rows"}, {"row_weights", true}}, {}},
      {"grouped_gemm", "per-expert C = A x B_e over the rows of each expert", {{"a"}, {"b"}, {"expert_tokens"}},
       {{"c"}}, {}},
      {"swiglu", "silu(gate) * up, optional clamp and per-row weights", {{"h"}, {"row_weights", true}}, {{"a"}},
       {{"clamp", "double", J(nullptr)}, {"halves", "gate_first|up_first", J("gate_first")}}},
      {"combine", "out = residual + shared + sum_j w_j * y[row_idx[t K + j]]",
       {{"y"}, {"row_idx"}, {"weights", true}, {"residual", true}, {"shared", true}}, {{"out"}}, {}},
      {"flash_attention", "dense attention of each sequence's queries over its cache (no v: K = V, the MLA latent)",
       {{"q"}, {"k"}, {"v", true}, {"sinks", true}}, {{"out"}, {"lse", true}},
       {{"batch", "int", J(1)}, {"heads_kv", "int", J(1)}, {"causal", "bool", J(true)}, {"scale", "double", J(0.0)},
        {"lse_base", "e|2", J("e")}}},
      {"lightning_indexer", "index scores sum_h w[t,h] ReLU(<q[t,h], k[s]>) over the visible keys of the sequence",
       {{"q"}, {"k"}, {"q_scale"}, {"k_scale"}, {"w"}, {"after", true}}, {{"scores"}},
       {{"batch", "int", J(1)}, {"context", "int", J(1)}, {"ratio", "int", J(1)}}},
      {"index_topk", "the k best index scores of each query (-1 past the visible keys)", {{"scores"}},
       {{"indices"}, {"values", true}}, {}},
      {"sparse_attention", "one softmax over the indexed rows of one or two latent KV sources (K = V), with the sink",
       {{"q"}, {"kv"}, {"idx"}, {"kv1", true}, {"idx1", true}, {"sinks", true}, {"after", true}}, {{"out"}, {"lse", true}},
       {{"heads", "int", J(1)}, {"scale", "double", J(0.0)}, {"lse_base", "e|2", J("e")}, {"batch", "int", J(1)},
        {"context", "int", J(1)},
        {"window", "int", J(0)}, {"ratio", "int", J(1)}, {"all_visible", "bool", J(false)}}},
      {"compressor", "V4 KV compression: m tokens pooled per channel by softmax gates, RMSNorm, RoPE",
       {{"x"}, {"w_kv"}, {"w_gate"}, {"ape"}, {"norm"}, {"kv_state"}, {"score_state"}, {"rope_cos", true}, {"rope_sin", true}},
       {{"entries", true}, {"kv_state"}, {"score_state"}},
       {{"batch", "int", J(1)}, {"context", "int", J(1)}, {"ratio", "int", J(4)}, {"quant", "none|fp8", J("none")},
        {"rope_dims", "int", J(64)}}},
  };
  return kKinds;
}

const OpKindSpec& op_kind(const std::string& kind) {
  for (const auto& k : op_kinds())
    if (k.kind == kind) return k;
  throw InternalError("unknown op kind " + kind);
}

namespace {

// Shape rules of each kind. `in`/`out` give a port's tensor (nullptr for an unset optional port).
class ShapeCheck {
 public:
  ShapeCheck(const Graph& g, const OpNode& op) : g_(g), op_(op) {}

  const TensorDesc* in(const std::string& role) const { return port(op_.inputs, role); }
  const TensorDesc* out(const std::string& role) const { return port(op_.outputs, role); }

  // The port's tensor must have `rank` dimensions; returns its shape.
  const std::vector<int64_t>& rank(const TensorDesc* t, size_t rank) const {
    if (t->shape.size() != rank)
      fail(fmt::format("{} {} has {} dimensions, expected {}", t->name, shape_string(t->shape), t->shape.size(), rank));
    return t->shape;
  }
  void dtype(const TensorDesc* t, sim::DType want) const {
    if (t && t->dtype != want)
      fail(fmt::format("{} is {}, expected {}", t->name, sim::dtype_name(t->dtype), sim::dtype_name(want)));
  }
  void equal(int64_t a, int64_t b, const std::string& what) const {
    if (a != b) fail(fmt::format("shapes do not chain: {} ({} vs {})", what, a, b));
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw ConfigError(op_.loc, fmt::format("op {} ({}): {}", op_.name, op_.kind, what));
  }

 private:
  const TensorDesc* port(const std::map<std::string, std::string>& ports, const std::string& role) const {
    auto it = ports.find(role);
    return it == ports.end() ? nullptr : &g_.tensor(it->second);
  }
  const Graph& g_;
  const OpNode& op_;
};

void check_shapes(const Graph& g, const OpNode& op) {
  ShapeCheck c(g, op);
  const std::string& k = op.kind;
  if (k == "gemm") {
    auto& a = c.rank(c.in("a"), 2);
    auto& b = c.rank(c.in("b"), 2);
    auto& o = c.rank(c.out("c"), 2);
    c.equal(a[1], b[0], "a's columns and b's rows");
    c.equal(o[0], a[0], "c's rows and a's rows");
    c.equal(o[1], b[1], "c's columns and b's columns");
  } else if (k == "gating_score") {
    auto& l = c.rank(c.in("logits"), 2);
    auto& s = c.rank(c.out("scores"), 2);
    c.equal(l[0], s[0], "tokens of logits and scores");
    c.equal(l[1], s[1], "experts of logits and scores");
    c.dtype(c.in("logits"), sim::DType::Fp32);
    c.dtype(c.out("scores"), sim::DType::Fp32);
  } else if (k == "topk" || k == "hash_topk") {
    auto& s = c.rank(c.in("scores"), 2);
    auto& ids = c.rank(c.out("ids"), 2);
    auto& w = c.rank(c.out("weights"), 2);
    c.equal(ids[0], s[0], "tokens of ids and scores");
    c.equal(w[0], s[0], "tokens of weights and scores");
    c.equal(w[1], ids[1], "top-k of weights and ids");
    c.dtype(c.in("scores"), sim::DType::Fp32);
    c.dtype(c.out("ids"), sim::DType::Int32);
    c.dtype(c.out("weights"), sim::DType::Fp32);
    const int64_t experts = s[1], topk = ids[1];
    if (k == "topk") {
      if (const TensorDesc* b = c.in("bias")) {
        c.equal(c.rank(b, 1)[0], experts, "bias length and experts");
        c.dtype(b, sim::DType::Fp32);
      }
      const int64_t groups = op.attrs["groups"], topk_groups = op.attrs["topk_groups"];
      if (groups < 1 || experts % groups != 0)
        c.fail(fmt::format("groups = {} must divide the {} experts", groups, experts));
      if (topk_groups < 1 || topk_groups > groups)
        c.fail(fmt::format("topk_groups = {} must be in [1, groups = {}]", topk_groups, groups));
      if (topk < 1 || topk > topk_groups * (experts / groups))
        c.fail(fmt::format("top-k {} is larger than the {} experts available ({} of {} groups of {})", topk,
                           topk_groups * (experts / groups), topk_groups, groups, experts / groups));
    } else {
      c.equal(c.rank(c.in("input_ids"), 1)[0], s[0], "input_ids and tokens");
      c.equal(c.rank(c.in("tid2eid"), 2)[1], topk, "tid2eid's columns and top-k");
      c.dtype(c.in("input_ids"), sim::DType::Int32);
      c.dtype(c.in("tid2eid"), sim::DType::Int32);
      if (topk > experts) c.fail(fmt::format("top-k {} is larger than the {} experts", topk, experts));
    }
  } else if (k == "normalize") {
    auto& a = c.rank(c.in("weights"), 2);
    auto& b = c.rank(c.out("weights"), 2);
    c.equal(a[0], b[0], "tokens");
    c.equal(a[1], b[1], "top-k");
  } else if (k == "routing_sort") {
    auto& ids = c.rank(c.in("ids"), 2);
    c.equal(c.rank(c.out("row_idx"), 1)[0], ids[0] * ids[1], "row_idx length and tokens x top-k");
    c.rank(c.out("expert_tokens"), 1);
    c.dtype(c.in("ids"), sim::DType::Int32);
    c.dtype(c.out("row_idx"), sim::DType::Int32);
    c.dtype(c.out("expert_tokens"), sim::DType::Int32);
  } else if (k == "permute") {
    auto& x = c.rank(c.in("x"), 2);
    const int64_t flat = c.rank(c.in("row_idx"), 1)[0];
    auto& rows = c.rank(c.out("rows"), 2);
    c.equal(rows[0], flat, "permuted rows and row_idx length");
    c.equal(rows[1], x[1], "hidden of x and the permuted rows");
    if (flat % x[0] != 0) c.fail(fmt::format("row_idx length {} is not a multiple of the {} tokens", flat, x[0]));
    if (const TensorDesc* w = c.in("weights")) {
      c.equal(c.rank(w, 2)[0] * w->shape[1], flat, "weights' entries and row_idx length");
      if (!c.out("row_weights")) c.fail("weights given but no row_weights output");
      c.equal(c.rank(c.out("row_weights"), 1)[0], flat, "row_weights length and row_idx length");
    }
  } else if (k == "grouped_gemm") {
    auto& a = c.rank(c.in("a"), 2);
    auto& b = c.rank(c.in("b"), 3);
    auto& o = c.rank(c.out("c"), 2);
    c.equal(a[1], b[1], "a's columns and each expert weight's rows");
    c.equal(o[0], a[0], "c's rows and a's rows");
    c.equal(o[1], b[2], "c's columns and each expert weight's columns");
    c.equal(c.rank(c.in("expert_tokens"), 1)[0], b[0], "expert_tokens length and the experts of b");
  } else if (k == "swiglu") {
    auto& h = c.rank(c.in("h"), 2);
    auto& a = c.rank(c.out("a"), 2);
    c.equal(a[0], h[0], "rows of h and a");
    c.equal(h[1], 2 * a[1], "h's columns and twice a's columns ([gate | up])");
    if (const TensorDesc* w = c.in("row_weights")) c.equal(c.rank(w, 1)[0], h[0], "row_weights length and rows");
  } else if (k == "flash_attention") {
    const int64_t batch = op.attrs["batch"], hkv = op.attrs["heads_kv"];
    auto& q = c.rank(c.in("q"), 2);
    auto& kk = c.rank(c.in("k"), 2);
    auto& o = c.rank(c.out("out"), 2);
    if (batch < 1 || q[0] % batch || kk[0] % batch)
      c.fail(fmt::format("batch {} must divide the {} query rows and the {} cache rows", batch, q[0], kk[0]));
    if (hkv < 1 || kk[1] % hkv) c.fail(fmt::format("heads_kv {} must divide k's {} columns", hkv, kk[1]));
    if (q[0] / batch > kk[0] / batch)
      c.fail(fmt::format("{} queries per sequence but only {} cached tokens (the cache includes the new tokens)", q[0] / batch,
                         kk[0] / batch));
    const int64_t dqk = kk[1] / hkv;
    if (q[1] % dqk) c.fail(fmt::format("q's {} columns are not whole heads of {}", q[1], dqk));
    const int64_t heads = q[1] / dqk;
    if (heads % hkv) c.fail(fmt::format("{} query heads are not a multiple of {} KV heads", heads, hkv));
    if (const TensorDesc* v = c.in("v")) c.equal(c.rank(v, 2)[0], kk[0], "rows of k and v");
    if (o[1] % heads) c.fail(fmt::format("out's {} columns are not whole heads of {} heads", o[1], heads));
    c.equal(o[0], q[0], "rows of q and out");
    if (const TensorDesc* l = c.out("lse")) c.equal(c.rank(l, 2)[1], heads, "lse columns and heads");
  } else if (k == "lightning_indexer") {
    const int64_t batch = op.attrs["batch"], ratio = op.attrs["ratio"];
    auto& q = c.rank(c.in("q"), 2);
    auto& kk = c.rank(c.in("k"), 2);
    auto& w = c.rank(c.in("w"), 2);
    auto& s = c.rank(c.out("scores"), 2);
    if (batch < 1 || q[0] % batch || kk[0] % batch) c.fail(fmt::format("batch {} must divide the query and key rows", batch));
    if (ratio < 1) c.fail("ratio must be >= 1");
    c.equal(w[0], q[0], "rows of w and q");
    if (q[1] != w[1] * kk[1]) c.fail(fmt::format("q's {} columns are not w's {} heads x k's {} dims", q[1], w[1], kk[1]));
    c.equal(s[0], q[0], "rows of scores and q");
    c.equal(s[1], kk[0] / batch, "scores' columns and the keys of a sequence");
    c.equal(c.rank(c.in("q_scale"), 2)[1], w[1], "q_scale columns and heads");
    c.equal(c.rank(c.in("k_scale"), 1)[0], kk[0], "k_scale length and key rows");
    c.dtype(c.out("scores"), sim::DType::Fp32);
  } else if (k == "index_topk") {
    auto& s = c.rank(c.in("scores"), 2);
    auto& i = c.rank(c.out("indices"), 2);
    c.equal(i[0], s[0], "rows of indices and scores");
    if (i[1] > s[1]) c.fail(fmt::format("top-k {} is larger than the {} keys scored", i[1], s[1]));
    c.dtype(c.out("indices"), sim::DType::Int32);
  } else if (k == "sparse_attention") {
    const int64_t heads = op.attrs["heads"];
    auto& q = c.rank(c.in("q"), 2);
    auto& kv = c.rank(c.in("kv"), 2);
    auto& o = c.rank(c.out("out"), 2);
    if (heads < 1 || q[1] % heads || o[1] % heads) c.fail(fmt::format("heads {} must divide q's and out's columns", heads));
    c.equal(q[1] / heads, kv[1], "q's head dim and the KV rows");
    if (o[1] / heads > kv[1]) c.fail("the value dim is larger than the KV rows (V is the first columns of K)");
    c.equal(c.rank(c.in("idx"), 2)[0], q[0], "rows of idx and q");
    if (const TensorDesc* kv1 = c.in("kv1")) {
      c.equal(c.rank(kv1, 2)[1], kv[1], "widths of the two KV sources");
      if (!c.in("idx1")) c.fail("kv1 given without idx1");
      c.equal(c.rank(c.in("idx1"), 2)[0], q[0], "rows of idx1 and q");
    }
    if (const TensorDesc* s = c.in("sinks")) c.equal(c.rank(s, 1)[0], heads, "sinks and heads");
    c.equal(o[0], q[0], "rows of q and out");
  } else if (k == "compressor") {
    const int64_t ratio = op.attrs["ratio"];
    if (ratio != 4 && ratio != 128 && ratio != 16)
      c.fail(fmt::format("ratio {} is not one V4 uses (4 overlapped, 128; 16 for toy)", ratio));
    auto& x = c.rank(c.in("x"), 2);
    auto& wkv = c.rank(c.in("w_kv"), 2);
    c.equal(wkv[0], x[1], "x's columns and w_kv's rows");
    c.equal(c.rank(c.in("w_gate"), 2)[1], wkv[1], "w_gate and w_kv columns");
    c.equal(c.rank(c.in("ape"), 2)[0], ratio, "ape rows and the ratio");
    const int64_t d = c.rank(c.in("norm"), 1)[0];
    if (wkv[1] % d || (wkv[1] / d != 1 && wkv[1] / d != 2)) c.fail(fmt::format("w_kv's {} columns are not 1 or 2 heads of {}", wkv[1], d));
    if (const TensorDesc* e = c.out("entries")) {
      c.equal(c.rank(e, 2)[1], d, "entry width and norm");
      if (!c.in("rope_cos") || !c.in("rope_sin")) c.fail("entries need the rope_cos and rope_sin tables of their positions");
      c.equal(c.rank(c.in("rope_cos"), 2)[0], e->shape[0], "rope_cos rows and entries");
    }
    for (const char* st : {"kv_state", "score_state"}) {
      c.equal(c.rank(c.in(st), 2)[1], wkv[1], std::string(st) + " columns and w_kv columns");
      c.equal(c.rank(c.out(st), 2)[0], c.in(st)->shape[0], std::string(st) + " rows in and out");
    }
  } else if (k == "combine") {
    auto& y = c.rank(c.in("y"), 2);
    auto& o = c.rank(c.out("out"), 2);
    const int64_t flat = c.rank(c.in("row_idx"), 1)[0];
    c.equal(o[1], y[1], "hidden of y and out");
    if (flat % o[0] != 0) c.fail(fmt::format("row_idx length {} is not a multiple of the {} tokens", flat, o[0]));
    if (y[0] < flat) c.fail(fmt::format("y has {} rows, fewer than the {} routed entries", y[0], flat));
    if (const TensorDesc* w = c.in("weights")) c.equal(c.rank(w, 2)[0] * w->shape[1], flat, "weights' entries and row_idx length");
    for (const char* r : {"residual", "shared"})
      if (const TensorDesc* t = c.in(r)) {
        c.equal(c.rank(t, 2)[0], o[0], std::string(r) + " rows and tokens");
        c.equal(t->shape[1], o[1], std::string(r) + " columns and hidden");
      }
  }
}

}  // namespace

void check_graph(const Graph& g) {
  std::set<std::string> names, written, op_names;
  for (const auto& t : g.tensors) {
    if (!names.insert(t.name).second) throw ConfigError(t.loc, "tensor " + t.name + " is declared twice");
    for (int64_t d : t.shape)
      if (d <= 0) throw ConfigError(t.loc, fmt::format("tensor {} has shape {}: dimensions must be > 0", t.name, shape_string(t.shape)));
  }
  for (const auto& op : g.ops) {
    if (!op_names.insert(op.name).second) throw ConfigError(op.loc, "op name " + op.name + " is used twice");
    const OpKindSpec& spec = op_kind(op.kind);
    auto check_ports = [&](const std::map<std::string, std::string>& ports, const std::vector<PortSpec>& want,
                           const char* dir) {
      for (const auto& [role, t] : ports) {
        bool known = false;
        for (const auto& p : want) known = known || p.role == role;
        if (!known) {
          std::vector<std::string> roles;
          for (const auto& p : want) roles.push_back(p.role);
          throw ConfigError(op.loc, fmt::format("op {} ({}) has no {} port '{}'{} (ports: {})", op.name, op.kind, dir, role,
                                                did_you_mean(role, roles), fmt::join(roles, ", ")));
        }
        if (!names.count(t)) throw ConfigError(op.loc, fmt::format("op {}: tensor '{}' is not declared", op.name, t));
      }
      for (const auto& p : want)
        if (!p.optional && !ports.count(p.role))
          throw ConfigError(op.loc, fmt::format("op {} ({}) needs its {} port '{}'", op.name, op.kind, dir, p.role));
    };
    check_ports(op.inputs, spec.inputs, "input");
    check_ports(op.outputs, spec.outputs, "output");
    for (const auto& [role, t] : op.inputs)
      if (g.producer(t) >= 0 && !written.count(t))
        throw ConfigError(op.loc, fmt::format("op {} reads {} before the op writing it (list ops in dependency order)", op.name, t));
    for (const auto& [role, t] : op.outputs)
      if (!written.insert(t).second) throw ConfigError(op.loc, fmt::format("tensor {} is written by two ops", t));
    check_shapes(g, op);
  }
}

namespace {

// 2^48 elements (a 256 TiB tensor of one byte each) is far beyond any device; it keeps every size
// and byte count the graph computes inside int64.
constexpr int64_t kMaxElements = int64_t(1) << 48;

std::vector<int64_t> parse_shape(const YamlNode& n, const std::map<std::string, int64_t>& dims) {
  if (!n.is_seq()) n.fail("expected a shape: a list of sizes or dimension names (e.g. [T, D] or [T*K, 4096])");
  std::vector<int64_t> shape;
  for (size_t i = 0; i < n.size(); ++i) {
    YamlNode d = n[i];
    std::string text = d.as_string();
    int64_t v = 1;
    size_t pos = 0;
    while (pos <= text.size()) {  // a product of integers and dimension names
      size_t star = text.find('*', pos);
      std::string f = text.substr(pos, star == std::string::npos ? std::string::npos : star - pos);
      f.erase(0, f.find_first_not_of(' '));
      f.erase(f.find_last_not_of(' ') + 1);
      int64_t factor = 0;
      if (!f.empty() && std::all_of(f.begin(), f.end(), ::isdigit)) {
        factor = f.size() <= 18 ? std::stoll(f) : kMaxElements + 1;
      } else if (auto it = dims.find(f); it != dims.end()) {
        factor = it->second;
      } else {
        std::vector<std::string> names;
        for (const auto& [k, x] : dims) names.push_back(k);
        d.fail(fmt::format("unknown dimension '{}'{} (dims: {})", f, did_you_mean(f, names), fmt::join(names, ", ")));
      }
      if (factor > kMaxElements || __builtin_mul_overflow(v, factor, &v) || v > kMaxElements)
        d.fail(fmt::format("'{}' is beyond 2^48, the largest tensor npusim models", text));
      if (star == std::string::npos) break;
      pos = star + 1;
    }
    if (v <= 0) d.fail("dimensions must be > 0");
    shape.push_back(v);
  }
  int64_t elements = 1;
  for (int64_t x : shape)
    if (__builtin_mul_overflow(elements, x, &elements) || elements > kMaxElements)
      n.fail(fmt::format("a tensor of shape {} has more than 2^48 elements, the largest npusim models", shape_string(shape)));
  return shape;
}

nlohmann::json parse_attr(const YamlNode& n, const AttrSpec& a) {
  if (a.type == "int") return n.as_int();
  if (a.type == "double") return n.as_double();
  if (a.type == "bool") return n.as_bool();
  std::vector<std::string> choices;
  for (size_t pos = 0; pos <= a.type.size();) {
    size_t bar = a.type.find('|', pos);
    choices.push_back(a.type.substr(pos, bar == std::string::npos ? std::string::npos : bar - pos));
    if (bar == std::string::npos) break;
    pos = bar + 1;
  }
  return n.as_enum(choices);
}

}  // namespace

Graph load_graph_file(const std::string& file, int64_t tokens) {
  auto doc = YamlDoc::load(file);
  YamlNode root = doc->root();
  Graph g;
  g.model = file;
  g.name = root.at("graph").as_string();
  std::map<std::string, int64_t> dims{{"tokens", tokens}};
  if (auto d = root.get("dims"))
    for (const auto& key : d->keys()) {
      YamlNode v = d->at(key);
      dims[key] = v.as_string() == "tokens" ? tokens : v.as_positive_int();
    }
  YamlNode ts = root.at("tensors");
  for (const auto& name : ts.keys()) {
    YamlNode t = ts.at(name);
    TensorDesc td;
    td.name = name;
    td.loc = t.loc();
    td.shape = parse_shape(t.at("shape"), dims);
    td.dtype = *sim::dtype_from_name(t.at("dtype").as_enum({"fp16", "bf16", "fp32", "int32", "int8"}));
    g.tensors.push_back(std::move(td));
  }
  YamlNode ops = root.at("ops");
  if (!ops.is_seq()) ops.fail("expected a list of ops");
  for (size_t i = 0; i < ops.size(); ++i) {
    YamlNode o = ops[i];
    OpNode op;
    op.loc = o.loc();
    op.name = o.at("name").as_string();
    std::vector<std::string> kinds;
    for (const auto& k : op_kinds()) kinds.push_back(k.kind);
    op.kind = o.at("op").as_enum(kinds);
    const OpKindSpec& spec = op_kind(op.kind);
    for (auto [key, ports] : {std::pair{"in", &op.inputs}, std::pair{"out", &op.outputs}}) {
      YamlNode p = o.at(key);
      for (const auto& role : p.keys()) (*ports)[role] = p.at(role).as_string();
    }
    std::optional<YamlNode> attrs = o.get("attrs");
    for (const auto& a : spec.attrs) {
      std::optional<YamlNode> v = attrs ? attrs->get(a.name) : std::nullopt;
      op.attrs[a.name] = v ? parse_attr(*v, a) : a.default_value;
    }
    g.ops.push_back(std::move(op));
  }
  if (auto notes = root.get("notes"))
    for (size_t i = 0; i < notes->size(); ++i) g.notes.push_back((*notes)[i].as_string());
  doc->finish();
  check_graph(g);
  return g;
}

std::string format_graph(const Graph& g) {
  std::string out = fmt::format("graph {} ({} tensors, {} ops)\n", g.name, g.tensors.size(), g.ops.size());
  for (const auto& n : g.notes) out += "  note: " + n + "\n";
  out += "tensors:\n";
  for (const auto& t : g.tensors)
    out += fmt::format("  {:<16} {:<22} {:<5} {}\n", t.name, shape_string(t.shape), sim::dtype_name(t.dtype),
                       g.producer(t.name) < 0 ? "input" : "");
  out += "ops:\n";
  for (const auto& op : g.ops) {
    std::vector<std::string> ins, outs;
    for (const auto& [r, t] : op.inputs) ins.push_back(r + "=" + t);
    for (const auto& [r, t] : op.outputs) outs.push_back(r + "=" + t);
    std::string attrs;
    for (const auto& [k, v] : op.attrs.items())
      if (!v.is_null()) attrs += fmt::format(" {}={}", k, v.dump());
    out += fmt::format("  {:<12} {:<13} {} -> {}{}\n", op.name, op.kind, fmt::join(ins, " "), fmt::join(outs, " "), attrs);
  }
  return out;
}

}  // namespace npusim::graphs
