#include "sim/program.hpp"

namespace npusim::sim {

size_t Program::instruction_count() const {
  size_t n = 0;
  for (const auto& c : cores) n += c.code.size();
  return n;
}

namespace {
Instr make(Op op, Pipe pipe) {
  Instr i;
  i.op = op;
  i.pipe = pipe;
  return i;
}
}  // namespace

void CoreBuilder::push(const Instr& i, const Operands& ops) {
  p_.code.push_back(i);
  if (functional_) p_.operands.push_back(ops);
}

void CoreBuilder::copy(Path path, uint32_t bytes, GmRegion gm, const Operands& ops) {
  Instr i = make(Op::Copy, path_pipe(path));
  i.path = path;
  i.bytes = bytes;
  i.gm = gm;
  push(i, ops);
}

void CoreBuilder::mmad(uint32_t m, uint32_t n, uint32_t k, DType in, const Operands& ops) {
  Instr i = make(Op::Mmad, Pipe::M);
  i.m = m, i.n = n, i.k = k;
  i.dtype = in;
  push(i, ops);
}

void CoreBuilder::vec(VecOp op, DType dt, uint32_t elems, const Operands& ops) {
  Instr i = make(Op::Vector, Pipe::V);
  i.vop = op;
  i.dtype = dt;
  i.m = elems;
  push(i, ops);
}

void CoreBuilder::set_flag(Pipe src, Pipe dst, int id) {
  Instr i = make(Op::SetFlag, src);
  i.other = dst;
  i.id = static_cast<uint8_t>(id);
  push(i);
}

void CoreBuilder::wait_flag(Pipe src, Pipe dst, int id) {
  Instr i = make(Op::WaitFlag, dst);
  i.other = src;
  i.id = static_cast<uint8_t>(id);
  push(i);
}

void CoreBuilder::barrier(Pipe p) { push(make(Op::Barrier, p)); }

void CoreBuilder::cross_set(Pipe p, int mode, int id) {
  Instr i = make(Op::CrossSet, p);
  i.mode = static_cast<uint8_t>(mode);
  i.id = static_cast<uint8_t>(id);
  push(i);
}

void CoreBuilder::cross_wait(Pipe p, int id) {
  Instr i = make(Op::CrossWait, p);
  i.id = static_cast<uint8_t>(id);
  push(i);
}

void CoreBuilder::scalar(uint32_t cycles) {
  Instr i = make(Op::Scalar, Pipe::S);
  i.m = cycles;
  push(i);
}

}  // namespace npusim::sim
