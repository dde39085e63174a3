/* execl, execle and execlp: their arguments are a variadic list, which
 * stable Rust cannot define, so these gather it into an array on the stack
 * (as glibc's own do: a vfork child may call them, so nothing is allocated)
 * and hand it to spinguard_shim_exec_list in family.rs. glibc's versions call
 * an internal execve that LD_PRELOAD cannot reach; these replace them.
 *
 * They are exported as execl, execle and execlp by one-jump trampolines in
 * family.rs: a cdylib exports only the symbols Rust defines. */

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>

extern char **environ;
int spinguard_shim_exec_list(const char *path, char *const argv[], char *const envp[], int search);

/* Sets argc to the number of arguments, `arg` included, before the NULL
 * that ends the list (0 when `arg` is that NULL). */
#define COUNT_ARGS(arg, argc)                                  \
    do {                                                       \
        va_list ap_;                                           \
        va_start(ap_, arg);                                    \
        argc = 0;                                              \
        if (arg != NULL)                                       \
            for (argc = 1; va_arg(ap_, const char *) != NULL;  \
                 argc++)                                       \
                if (argc == INT_MAX) {                         \
                    va_end(ap_);                               \
                    errno = E2BIG;                             \
                    return -1;                                 \
                }                                              \
        va_end(ap_);                                           \
    } while (0)

/* Fills argv[0..argc] from the list, NULL-terminated, leaving `ap` just
 * past the list's NULL (where execle's envp is). */
#define FILL_ARGS(ap, arg, argc, argv)                         \
    do {                                                       \
        argv[0] = (char *)arg;                                 \
        /* reads the rest of the list and its NULL */          \
        for (size_t i_ = 1; i_ <= argc && arg != NULL; i_++)   \
            argv[i_] = va_arg(ap, char *);                     \
        argv[argc] = NULL;                                     \
    } while (0)

/* One of the three: `name` takes (path, arg, ...), searches PATH when
 * `search`, and reads envp after the list's NULL when `with_env`. */
#define EXEC_LIST(name, search, with_env)                               \
    int name(const char *path, const char *arg, ...) {                  \
        size_t argc;                                                    \
        COUNT_ARGS(arg, argc);                                          \
        char *argv[argc + 1];                                           \
        va_list ap;                                                     \
        va_start(ap, arg);                                              \
        FILL_ARGS(ap, arg, argc, argv);                                 \
        char *const *envp = with_env ? va_arg(ap, char *const *)        \
                                     : (char *const *)environ;          \
        va_end(ap);                                                     \
        return spinguard_shim_exec_list(path, argv, envp, search);      \
    }

EXEC_LIST(spinguard_shim_execl, 0, 0)
EXEC_LIST(spinguard_shim_execlp, 1, 0)
EXEC_LIST(spinguard_shim_execle, 0, 1)
