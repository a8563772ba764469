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

void CoreBuilder::copy(Path path, uint32_t bytes, GmRegion gm) {
  Instr i = make(Op::Copy, path_pipe(path));
  i.path = path;
  i.bytes = bytes;
  i.gm = gm;
  p_.code.push_back(i);
}

void CoreBuilder::mmad(uint32_t m, uint32_t n, uint32_t k, DType in) {
  Instr i = make(Op::Mmad, Pipe::M);
  i.m = m, i.n = n, i.k = k;
  i.dtype = in;
  p_.code.push_back(i);
}

void CoreBuilder::vec(VecOp op, DType dt, uint32_t elems) {
  Instr i = make(Op::Vector, Pipe::V);
  i.vop = op;
  i.dtype = dt;
  i.m = elems;
  p_.code.push_back(i);
}

void CoreBuilder::set_flag(Pipe src, Pipe dst, int id) {
  Instr i = make(Op::SetFlag, src);
  i.other = dst;
  i.id = static_cast<uint8_t>(id);
  p_.code.push_back(i);
}

void CoreBuilder::wait_flag(Pipe src, Pipe dst, int id) {
  Instr i = make(Op::WaitFlag, dst);
  i.other = src;
  i.id = static_cast<uint8_t>(id);
  p_.code.push_back(i);
}

void CoreBuilder::barrier(Pipe p) { p_.code.push_back(make(Op::Barrier, p)); }

void CoreBuilder::cross_set(Pipe p, int mode, int id) {
  Instr i = make(Op::CrossSet, p);
  i.mode = static_cast<uint8_t>(mode);
  i.id = static_cast<uint8_t>(id);
  p_.code.push_back(i);
}

void CoreBuilder::cross_wait(Pipe p, int id) {
  Instr i = make(Op::CrossWait, p);
  i.id = static_cast<uint8_t>(id);
  p_.code.push_back(i);
}

}  // namespace npusim::sim
