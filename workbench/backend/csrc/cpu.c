/* What this CPU can run, asked of the CPU itself: cpuid (through __builtin_cpu_supports) on
 * x86-64, the kernel's hardware capabilities (getauxval) on Linux/ARM, sysctl on macOS/ARM.
 * Always compiled for the architecture's baseline, so it runs on any CPU before the kernels
 * built for a newer one are called. Feature names are those of workbench/backend/isa.py. */
#include <string.h>

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif
#if defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

#ifndef WB_ISA
#define WB_ISA "unknown"
#endif

static char features[512];

static void add(int has, const char *name) {
    if (!has) return;
    if (features[0]) strcat(features, ",");
    strcat(features, name);
}

#if defined(__aarch64__) && defined(__APPLE__)
static int sysctl_flag(const char *name) {
    int v = 0;
    size_t n = sizeof v;
    return sysctlbyname(name, &v, &n, 0, 0) == 0 && v;
}
#endif

/* Comma-separated features of this CPU (those the kernel builds care about). */
const char *wb_cpu_features(void) {
    features[0] = 0;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    add(__builtin_cpu_supports("sse4.2"), "sse4.2");
    add(__builtin_cpu_supports("popcnt"), "popcnt");
    add(__builtin_cpu_supports("avx"), "avx");
    add(__builtin_cpu_supports("avx2"), "avx2");
    add(__builtin_cpu_supports("fma"), "fma");
    add(__builtin_cpu_supports("bmi"), "bmi");
    add(__builtin_cpu_supports("bmi2"), "bmi2");
    add(__builtin_cpu_supports("f16c"), "f16c");
    add(__builtin_cpu_supports("movbe"), "movbe");
    add(__builtin_cpu_supports("lzcnt"), "lzcnt");
    add(__builtin_cpu_supports("avx512f"), "avx512f");
    add(__builtin_cpu_supports("avx512cd"), "avx512cd");
    add(__builtin_cpu_supports("avx512bw"), "avx512bw");
    add(__builtin_cpu_supports("avx512dq"), "avx512dq");
    add(__builtin_cpu_supports("avx512vl"), "avx512vl");
    add(__builtin_cpu_supports("avx512vnni"), "avx512vnni");
    add(__builtin_cpu_supports("avx512vbmi"), "avx512vbmi");
    add(__builtin_cpu_supports("avx512vbmi2"), "avx512vbmi2");
    add(__builtin_cpu_supports("avx512vpopcntdq"), "avx512vpopcntdq");
    add(__builtin_cpu_supports("avx512bitalg"), "avx512bitalg");
    add(__builtin_cpu_supports("avxvnni"), "avxvnni");
#elif defined(__aarch64__) && defined(__linux__)
    unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    add(hw & (1ul << 1), "asimd");    /* HWCAP_ASIMD */
    add(hw & (1ul << 20), "asimddp"); /* HWCAP_ASIMDDP */
    add(hw & (1ul << 22), "sve");     /* HWCAP_SVE */
    add(hw2 & (1ul << 13), "i8mm");   /* HWCAP2_I8MM */
#elif defined(__aarch64__) && defined(__APPLE__)
    add(1, "asimd");
    add(sysctl_flag("hw.optional.arm.FEAT_DotProd"), "asimddp");
    add(sysctl_flag("hw.optional.arm.FEAT_I8MM"), "i8mm");
#endif
    return features;
}

/* The instruction set this library's kernels were built for (isa.py's name). */
const char *wb_isa_name(void) { return WB_ISA; }
