/* _dl_find_object for static musl builds of aarch64 (the fallback route of cross/build.sh).
 *
 * Debian's gcc 12 for arm64 builds its unwinder (libgcc_eh.a, which stands in for libunwind.a
 * when std is built here) against glibc >= 2.35 and finds unwind tables with glibc's
 * _dl_find_object(); musl has no such function. This one answers from dl_iterate_phdr(), which
 * musl provides in static binaries: the loaded object containing `pc`, its mapped range, and
 * its PT_GNU_EH_FRAME (.eh_frame_hdr), which is all libgcc reads. Layout: glibc's
 * <bits/dl_find_object.h> for aarch64 (no eh_dbase, no eh_count fields).
 * Never used by the default route (rustup's prebuilt std brings LLVM's libunwind). */
#include <link.h>
#include <stdint.h>

struct dl_find_object {
    unsigned long long dlfo_flags;
    void *dlfo_map_start;
    void *dlfo_map_end;
    void *dlfo_link_map;
    void *dlfo_eh_frame;
    unsigned long long dlfo_reserved[7];
};

struct query {
    uintptr_t pc;
    struct dl_find_object *out;
    int found;
};

static int visit(struct dl_phdr_info *info, size_t size, void *data) {
    struct query *q = data;
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    void *eh = 0;
    int contains = 0;
    (void)size;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *p = &info->dlpi_phdr[i];
        uintptr_t start = info->dlpi_addr + p->p_vaddr;
        if (p->p_type == PT_LOAD) {
            if (start < lo) lo = start;
            if (start + p->p_memsz > hi) hi = start + p->p_memsz;
            if (q->pc >= start && q->pc < start + p->p_memsz) contains = 1;
        } else if (p->p_type == PT_GNU_EH_FRAME) {
            eh = (void *)start;
        }
    }
    if (!contains || !eh) return 0;
    q->out->dlfo_flags = 0;
    q->out->dlfo_map_start = (void *)lo;
    q->out->dlfo_map_end = (void *)hi;
    q->out->dlfo_link_map = 0;
    q->out->dlfo_eh_frame = eh;
    q->found = 1;
    return 1;
}

int _dl_find_object(void *pc, struct dl_find_object *out) {
    struct query q = {(uintptr_t)pc, out, 0};
    dl_iterate_phdr(visit, &q);
    return q.found ? 0 : -1;
}
