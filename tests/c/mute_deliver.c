/* Attaches a tracepoint program that returns 0 to signal:signal_deliver,
 * and holds it until killed: what a tool such as a sigsnoop variant does.
 * A tracepoint program's result gates every perf sample of that tracepoint
 * (the kernel ANDs them), so this hides signal deliveries from anyone who
 * samples them with perf, as spinguard watch's trigger does.
 *
 *   cc mute_deliver.c -o mute_deliver && ./mute_deliver
 * Prints "attached" once the program is in place.
 */
#define _GNU_SOURCE
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void) {
    FILE *f = fopen("/sys/kernel/tracing/events/signal/signal_deliver/id", "r");
    int id;
    if (!f || fscanf(f, "%d", &id) != 1) { perror("mute_deliver: tracepoint id"); return 1; }
    fclose(f);
    struct bpf_insn insns[2];
    memset(insns, 0, sizeof insns);
    insns[0].code = BPF_ALU64 | BPF_MOV | BPF_K; /* r0 = 0 */
    insns[1].code = BPF_JMP | BPF_EXIT;
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.prog_type = BPF_PROG_TYPE_TRACEPOINT;
    a.insn_cnt = 2;
    a.insns = (uintptr_t)insns;
    a.license = (uintptr_t)"GPL";
    int prog = syscall(SYS_bpf, BPF_PROG_LOAD, &a, sizeof a);
    if (prog < 0) { perror("mute_deliver: BPF_PROG_LOAD"); return 1; }
    struct perf_event_attr pa;
    memset(&pa, 0, sizeof pa);
    pa.type = PERF_TYPE_TRACEPOINT;
    pa.size = sizeof pa;
    pa.config = id;
    int ev = syscall(SYS_perf_event_open, &pa, -1, 0, -1, PERF_FLAG_FD_CLOEXEC);
    if (ev < 0) { perror("mute_deliver: perf_event_open"); return 1; }
    if (ioctl(ev, PERF_EVENT_IOC_SET_BPF, prog) || ioctl(ev, PERF_EVENT_IOC_ENABLE, 0)) {
        perror("mute_deliver: attach");
        return 1;
    }
    printf("attached\n");
    fflush(stdout);
    pause();
    return 0;
}
