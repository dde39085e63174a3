/* A 32-bit (i386) eBPF loader, for the probe's compat path: on x86_64 its
 * bpf(2) calls go through the ia32 syscall table (number 357), which the
 * syscalls:sys_{enter,exit}_bpf tracepoints never see.
 *
 * It loads the slow-to-verify loop program, retrying EAGAIN/EINTR at once
 * like cilium/ebpf, while a second thread sends the loading thread SIGPROF
 * with tgkill at --storm-hz. Prints one line like the other loaders:
 * `loaded attempts=N ms=M` or `spinning attempts=N ms=M` (--wait ran out).
 *
 *   gcc -m32 -O2 -pthread loader32.c -o loader32
 *   ./loader32 --storm-hz 1000 --wait 10
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/bpf.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile pid_t loader_tid;
static volatile int done;
static int storm_hz;

static void on_prof(int sig) { (void)sig; }

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void *storm(void *arg) {
    (void)arg;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    long period = 1000000000L / storm_hz;
    while (!done) {
        if (loader_tid)
            syscall(SYS_tgkill, getpid(), loader_tid, SIGPROF);
        next.tv_nsec += period;
        while (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    }
    return NULL;
}

int main(int argc, char **argv) {
    int iters = 100000;
    double wait_s = 2;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--iters")) iters = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--storm-hz")) storm_hz = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--wait")) wait_s = atof(argv[i + 1]);
        else { fprintf(stderr, "loader32: unknown argument %s\n", argv[i]); return 64; }
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_prof;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGPROF, &sa, NULL);
    pthread_t t;
    if (storm_hz > 0 && pthread_create(&t, NULL, storm, NULL) != 0) {
        perror("loader32: pthread_create");
        return 3;
    }

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

    loader_tid = (pid_t)syscall(SYS_gettid);
    double start = now_ms();
    long attempts = 0;
    const char *result = "spinning";
    for (;;) {
        attempts++;
        long fd = syscall(SYS_bpf, BPF_PROG_LOAD, &a, sizeof a);
        if (fd >= 0) { close((int)fd); result = "loaded"; break; }
        if (errno != EAGAIN && errno != EINTR) {
            printf("failed errno=%d attempts=%ld\n", errno, attempts);
            return 3;
        }
        if (now_ms() - start > wait_s * 1e3) break;
    }
    done = 1;
    printf("%s attempts=%ld ms=%.0f\n", result, attempts, now_ms() - start);
    fflush(stdout);
    return strcmp(result, "loaded") == 0 ? 0 : 2;
}
