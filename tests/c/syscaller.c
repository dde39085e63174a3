/* A library that calls syscall() itself, for tests/host_safety.rs: loaded
 * with dlopen by host_probe, it must find the shim's syscall and be guarded,
 * and dlclose must leave the process fine. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/bpf.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static long attempts;

long lib_attempts(void) { return attempts; }

long lib_getpid(void) { return syscall(SYS_getpid); }

/* Loads the loop program, retrying EAGAIN/EINTR up to 50 times. */
long lib_load(int iters) {
    struct bpf_insn insns[5];
    memset(insns, 0, sizeof insns);
    insns[0].code = BPF_ALU64 | BPF_MOV | BPF_K; insns[0].dst_reg = 1;
    insns[1].code = BPF_ALU64 | BPF_ADD | BPF_K; insns[1].dst_reg = 1; insns[1].imm = 1;
    insns[2].code = BPF_JMP | BPF_JLT | BPF_K; insns[2].dst_reg = 1; insns[2].off = -2; insns[2].imm = iters;
    insns[3].code = BPF_ALU64 | BPF_MOV | BPF_K;
    insns[4].code = BPF_JMP | BPF_EXIT;
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
    a.insn_cnt = 5;
    a.insns = (uintptr_t)insns;
    a.license = (uintptr_t)"GPL";
    for (attempts = 1; attempts <= 50; attempts++) {
        long fd = syscall(SYS_bpf, BPF_PROG_LOAD, &a, sizeof a);
        if (fd >= 0) { close((int)fd); return 0; }
        if (errno != EAGAIN && errno != EINTR) return -1;
    }
    return -1;
}
