#include "sim/program.hpp"

namespace npusim::sim {

size_t Program::instruction_count() const {
  size_t n = 0;
  for (const auto& c : cores) n += c.code.size();
  return n;
}

void CoreBuilder::copy(Path path, uint32_t bytes, GmRegion gm) {
  Instr i;
  i.op = Op::Copy;
  i.pipe = path_pipe(path);
  i.path = path;
  i.bytes = bytes;
  i.gm = gm;
  p_.code.push_back(i);
}

void CoreBuilder::mmad(uint32_t m, uint32_t n, uint32_t k, DType in) {
  Instr i;
  i.op = Op::Mmad;
  i.pipe = Pipe::M;
  i.m = m;
  i.n = n;
  i.k = k;
  i.dtype = in;
  p_.code.push_back(i);
}

void CoreBuilder::vec(VecOp op, DType dt, uint32_t elems) {
  Instr i;
  i.op = Op::Vector;
  i.pipe = Pipe::V;
  i.vop = op;
  i.dtype = dt;
  i.m = elems;
  p_.code.push_back(i);
}

void CoreBuilder::set_flag(Pipe src, Pipe dst, int id) {
  Instr i;
  i.op = Op::SetFlag;
  i.pipe = src;
  i.other = dst;
  i.id = static_cast<uint8_t>(id);
  p_.code.push_back(i);
}

void CoreBuilder::wait_flag(Pipe src, Pipe dst, int id) {
  Instr i;
  i.op = Op::WaitFlag;
  i.pipe = dst;
  i.other = src;
  i.id = static_cast<uint8_t>(id);
  p_.code.push_back(i);
}

void CoreBuilder::barrier(Pipe p) {
  Instr i;
  i.op = Op::Barrier;
  i.pipe = p;
  p_.code.push_back(i);
}

void CoreBuilder::cross_set(Pipe p, int mode, int id) {
  Instr i;
  i.op = Op::CrossSet;
  i.pipe = p;
  i.mode = static_cast<uint8_t>(mode);
  i.id = static_cast<uint8_t>(id);
  p_.code.push_back(i);
}

void CoreBuilder::cross_wait(Pipe p, int id) {
  Instr i;
  i.op = Op::CrossWait;
  i.pipe = p;
  i.id = static_cast<uint8_t>(id);
  p_.code.push_back(i);
}

}  // namespace npusim::sim
