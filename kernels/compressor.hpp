// DeepSeek-V4's KV compressor (KERNELS.md 2.5, 4.2; CANN/vllm-ascend `compressor`): the main KV
// (d 512) or indexer-key (d 128) compressor with ratio m = 4 (overlapped, c = 2) or 128 (c = 1),
// as defined in kernels/reference/compressor.hpp: x [Wkv | Wgate] on the cube, then ape add,
// per-channel softmax pooling over each block's rows, RMSNorm, RoPE at the block's first position
// and (main KV) FP8 fake quantisation of the non-rope dims, with the fp32 state carried between
// calls updated in place. The indexer's Hadamard rotation and FP4 fake quantisation are not
// modelled (quant: none gives the indexer keys before them).
//
// Pooling is split into partials so that no core waits for another's rows: a run of rows of one
// block (a fragment) gives, per channel, P = (M, Z, N) = (max score, sum of exp(score - M),
// sum of exp(score - M) kv); fragments merge as flash attention merges (M = max, Z and N rescaled
// by exp(M_i - M)), and the entry is N / Z. An overlapped entry merges its own block's fragments
// (channels [d, 2d)) with the previous block's (channels [0, d)); block 0 has no previous block,
// the (kv 0, score -inf) half.
//
// Prefill (tokens >= 2), three AIV phases around a cube->vector pipeline (cube_vector.hpp):
//   S  the state's rows (a block that began in an earlier call) become partials in a GM
//      workspace, and an overlapped state's current rows move into its previous-block rows when
//      their block completes; an all-AIV barrier follows, so no state row is written before
//      every state row has been read;
//   A  AIC i computes items = (rows of a group of whole blocks, one half, `channels` columns): the
//      kv and score GEMM blocks go into a slot (GM workspace on 2201, each AIV's rows straight
//      into its UB on 3510); AIV 2i+k takes its share of the group's blocks (a block is split
//      between the two only when the group is one block), adds ape, writes the state rows that
//      change (the trailing partial block; overlapped, the last complete block), and turns each
//      block into a partial: blocks of at most `rows_per_tile` rows go `blocks_per_tile` at a
//      time, rows j of all of them side by side (max / sum over rows are flat ops over the j
//      slabs), longer ones in row chunks merged in UB; an all-AIV barrier ends each wave of items;
//   C  interleaved with A: once a wave's barrier has passed, the entries whose partials it
//      completed (their block's group and the one before), `entries_per_tile` at a time, while the
//      cube computes the next wave: merge the partials, N / Z, RMSNorm (reduce_sum,
//      rsqrt, per-row scale, weight), RoPE (pack the rope dims, gather the pair partners, muls /
//      adds with the cos / sin tables), FP8 fake quant (|x|, reduce_max per 64, ue8m0 scale by
//      ln / cast / exp with an exact correction, gather to broadcast it, e4m3 rounding: a cast on
//      hardware with fp8, else emulated with the same ln / cast / exp steps), cast, write.
// Decode (tokens == 1): one small GEMM into a GM workspace while each AIV turns the state rows
// of its emitting sequences into partials in UB; after the GEMM, per sequence: the new row (ape
// added) goes to the state, and an emitting sequence merges it, normalises, rotates, quantises and
// writes its entry.
//
// Rounding points (the same-precision golden's): the GEMM leaves L0C in fp32, every vector step is
// fp32, one cast to the output type at the end. (The port rounds the pooled entry to bf16 before
// its RMSNorm; with the fp32 state asked for here this kernel keeps it in fp32.)
//
// Tensors (in order): x [B T, H] (sequence-major), w_kv and w_gate [H, c d] stored [c d, H]
// (nn.Linear), ape [m, c d] fp32, norm_weight [1, d] fp32, rope_cos and rope_sin [n_out, rope dims]
// fp32 (each entry's position i m, expanded to the layout: a pair's value at both of its dims),
// kv_state and score_state [B c m, c d] fp32; outputs: c [n_out, d] (dtype), kv_state_out and
// score_state_out, the same GM as the inputs (updated in place).
#pragma once

#include <optional>

#include "kernels/gemm.hpp"
#include "kernels/reference/compressor.hpp"

namespace npusim::kernels {

struct CompressorShape {
  ref::CompressorConfig cfg;  // hidden, head_dim, ratio, overlap, eps, rope, fp8, tokens, starts
  sim::DType dtype = sim::DType::Bf16;
};

struct CompressorTiling {
  GemmTiling gemm;               // prefill: l1 = [rows per item, channels per item, k]; decode: the GEMM's blocks
  int64_t rows_per_tile = 32;    // AIV tile rows (a block longer than this goes in row chunks)
  int64_t blocks_per_tile = 4;   // AIV tile blocks (blocks of at most rows_per_tile rows)
  int64_t entries_per_tile = 2;  // entries finalised per AIV tile
  int buffers = 2;               // AIV buffer sets
  int slots = 2;                 // prefill items in flight between an AIC and its AIVs
};

class CompressorKernel : public Kernel {
 public:
  CompressorKernel(CompressorShape s, CompressorTiling t, bool is_default)
      : s_(std::move(s)), t_(t), default_(is_default) {}
  std::string op() const override { return "compressor"; }
  std::string name() const override;
  nlohmann::json tiling_json() const override;
  bool tiling_is_default() const override { return default_; }
  Status can_implement(const sim::HardwareSpec& hw) const override;
  sim::Program lower(const sim::HardwareSpec& hw, bool functional = false) const override;
  std::vector<TensorInfo> tensors() const override;
  Golden reference(const std::vector<std::vector<double>>& inputs) const override;
  std::vector<Golden> references(const std::vector<std::vector<double>>& inputs,
                                 const std::vector<std::vector<double>>& device) const override;
  double flops() const override;
  double compulsory_bytes() const override;
  double peak_flops_per_cycle(const sim::HardwareSpec& hw) const override {
    return 2.0 * hw.cube_macs_per_cycle(s_.dtype) * hw.num_aic;
  }
  double estimated_instructions() const override;
  std::vector<double> make_input(size_t index, const InputSpec& spec) const override;
  nlohmann::json details() const override;
  SearchSpace search_space(const sim::HardwareSpec& hw) const override;
  std::unique_ptr<Kernel> with_tiling(const YamlNode& tiling, const sim::HardwareSpec& hw) const override;
  const CompressorShape& shape() const { return s_; }
  const CompressorTiling& tiling() const { return t_; }

 private:
  CompressorShape s_;
  CompressorTiling t_;
  bool default_;
};

// UB bytes one AIV needs with this tiling on `hw` (constants, accumulators, slots, buffer sets).
int64_t compressor_ub_bytes(const CompressorShape& s, const CompressorTiling& t, const sim::HardwareSpec& hw);

// The documented default. Prefill: the first item shape of [256, 128], [128, 256], [128, 128],
// [128, 64], [64, 64], [64, 32], [64, 16] (rows rounded up to a multiple of m) whose fp32 block fits L0C
// and, with L0C->UB, whose slots (2, else 1) leave UB for two buffer sets, with blocks_per_tile 4
// and rows_per_tile 32 halved (to 1 and 8) until they fit; GEMM k1 256, k0 64 (2-byte types);
// 2 entries per tile; every AIC (the plan cuts the last wave's groups so that it covers them).
// Decode: a GEMM of the batch (m1 = B rounded to 16, at most 128) with n1 halved from 256 until
// half the AICs have a block (more, narrower blocks re-read x more than they gain in parallel
// weight streams), rows_per_tile halved from 32 until the whole-width state tiles fit.
CompressorTiling default_compressor_tiling(const CompressorShape& s, const sim::HardwareSpec& hw);

// A `tiling:` section over `base`: the GEMM keys (as gemm; cores kept when absent), rows_per_tile,
// blocks_per_tile, entries_per_tile, buffers, slots.
CompressorTiling parse_compressor_tiling(const YamlNode& tiling, CompressorTiling base, const CompressorShape& s,
                                         const sim::HardwareSpec& hw);

// workload: {op: compressor, hidden, head_dim, ratio, tokens, starts: [..] | batch + start
// (+ start_step), dtype, eps, overlap (default ratio == 4), quant: none | fp8,
// rope: {layout: interleaved | half, dims, at: tail | head, theta}}
// tiling: {l1, l0, stages, cores (GEMM, as gemm), rows_per_tile, blocks_per_tile, entries_per_tile,
// buffers, slots}
std::unique_ptr<Kernel> make_compressor(const YamlNode& workload, const std::optional<YamlNode>& tiling,
                                        const sim::HardwareSpec& hw);

}  // namespace npusim::kernels
