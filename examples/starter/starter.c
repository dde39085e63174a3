// spinguard test starter: starts PROGRAM ARGS... the way HOW says, so the
// tests can check that the shim follows every way a C program starts another.
//
// Build (what tests/support/loaders.rs runs):
//   cc -O2 -Wall -Wextra examples/starter/starter.c -o starter
//
// Usage: starter [--ld-preload VALUE | --unset-ld-preload | --dlopen SHIM] HOW PROGRAM [ARGS...]
//   HOW: execve execv execvp execvpe execl execlp execle fexecve execveat
//        posix_spawn posix_spawnp system popen vfork
//   --ld-preload VALUE   setenv("LD_PRELOAD", VALUE) first (a program that
//                        replaces LD_PRELOAD for its children)
//   --unset-ld-preload   unsetenv("LD_PRELOAD") first
//   --dlopen SHIM        dlopen SHIM and call ITS execve (HOW must be execve):
//                        how a setuid or setgid copy, where the loader ignores
//                        LD_PRELOAD, can still reach the shim's hook
// The exec forms replace the starter (the program's status is the process's
// own). The others wait for the child and exit with its exit code, or
// 128+N when it died of signal N; popen copies the child's output through.
// Exit 120 when the start itself failed (the reason on stderr).
// execl/execlp/execle pass at most 8 arguments (the test programs need fewer).

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static int fail(const char *what) {
    fprintf(stderr, "starter: %s: %s\n", what, strerror(errno));
    return 120;
}

static int status_of(int st) {
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return 121;
}

static int wait_for(pid_t pid) {
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return fail("waitpid");
    return status_of(st);
}

// The command line for system/popen: the arguments, each single-quoted.
static char *shell_line(char **argv) {
    size_t n = 1;
    for (char **a = argv; *a; a++)
        n += strlen(*a) * 4 + 3;
    char *s = malloc(n), *p = s;
    for (char **a = argv; *a; a++) {
        *p++ = '\'';
        for (const char *c = *a; *c; c++) {
            if (*c == '\'') {
                memcpy(p, "'\\''", 4);
                p += 4;
            } else {
                *p++ = *c;
            }
        }
        *p++ = '\'';
        *p++ = ' ';
    }
    *p = 0;
    return s;
}

int main(int argc, char **argv) {
    int i = 1;
    if (i + 1 < argc && strcmp(argv[i], "--ld-preload") == 0) {
        setenv("LD_PRELOAD", argv[i + 1], 1);
        i += 2;
    } else if (i < argc && strcmp(argv[i], "--unset-ld-preload") == 0) {
        unsetenv("LD_PRELOAD");
        i += 1;
    }
    int (*dl_execve)(const char *, char *const[], char *const[]) = NULL;
    if (i + 1 < argc && strcmp(argv[i], "--dlopen") == 0) {
        void *h = dlopen(argv[i + 1], RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            fprintf(stderr, "starter: dlopen: %s\n", dlerror());
            return 120;
        }
        dl_execve = (int (*)(const char *, char *const[], char *const[]))dlsym(h, "execve");
        if (!dl_execve) {
            fprintf(stderr, "starter: dlsym execve: %s\n", dlerror());
            return 120;
        }
        i += 2;
    }
    if (argc - i < 2) {
        fprintf(stderr, "usage: starter [--ld-preload V | --unset-ld-preload] HOW PROGRAM [ARGS...]\n");
        return 64;
    }
    const char *how = argv[i];
    char **args = &argv[i + 1];
    const char *prog = args[0];
    // Up to 8 arguments for the list forms, NULL-padded.
    char *l[9] = {0};
    for (int k = 0; k < 8 && args[k]; k++)
        l[k] = args[k];

    if (!strcmp(how, "execve")) {
        (dl_execve ? dl_execve : execve)(prog, args, environ);
    } else if (!strcmp(how, "execv")) {
        execv(prog, args);
    } else if (!strcmp(how, "execvp")) {
        execvp(prog, args);
    } else if (!strcmp(how, "execvpe")) {
        execvpe(prog, args, environ);
    } else if (!strcmp(how, "execl")) {
        execl(prog, l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7], (char *)NULL);
    } else if (!strcmp(how, "execlp")) {
        execlp(prog, l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7], (char *)NULL);
    } else if (!strcmp(how, "execle")) {
        execle(prog, l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7], (char *)NULL, environ);
    } else if (!strcmp(how, "fexecve")) {
        int fd = open(prog, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return fail("open");
        fexecve(fd, args, environ);
    } else if (!strcmp(how, "execveat")) {
        int dir = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dir < 0)
            return fail("open .");
        execveat(dir, prog, args, environ, 0);
    } else if (!strcmp(how, "posix_spawn") || !strcmp(how, "posix_spawnp")) {
        pid_t pid;
        int r = how[11] == 'p' ? posix_spawnp(&pid, prog, NULL, NULL, args, environ)
                               : posix_spawn(&pid, prog, NULL, NULL, args, environ);
        if (r != 0) {
            errno = r;
            return fail(how);
        }
        return wait_for(pid);
    } else if (!strcmp(how, "system")) {
        int st = system(shell_line(args));
        if (st < 0)
            return fail("system");
        return status_of(st);
    } else if (!strcmp(how, "popen")) {
        FILE *f = popen(shell_line(args), "r");
        if (!f)
            return fail("popen");
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0)
            fwrite(buf, 1, n, stdout);
        int st = pclose(f);
        if (st < 0)
            return fail("pclose");
        return status_of(st);
    } else if (!strcmp(how, "vfork")) {
        pid_t pid = vfork();
        if (pid == 0) {
            execve(prog, args, environ);
            _exit(127);
        }
        if (pid < 0)
            return fail("vfork");
        return wait_for(pid);
    } else {
        fprintf(stderr, "starter: unknown HOW %s\n", how);
        return 64;
    }
    return fail(how);
}
