// phiflash: software prefetch for the weight streams of the decode matmuls.
//
// A decode step reads every weight once, in order, and does little arithmetic per byte. On the
// 2-core x86 VMs we measure on (an Intel Xeon and an AMD EPYC), the hardware prefetcher alone
// leaves the kernels well short of the bandwidth a plain read gets; asking for the line
// PHIFLASH_PREFETCH_AHEAD bytes ahead of the one being used closes most of that gap
// (measurements: "Weight prefetch" in phiflash_gguf/README.md). A prefetch never faults and
// never changes a result: past the end of a matrix it only fetches a line nobody reads.
#pragma once

#include <stddef.h>
#include <immintrin.h>

#define PHIFLASH_PREFETCH_AHEAD 4096
#define PHIFLASH_CACHE_LINE     64

// prefetch the line ``PHIFLASH_PREFETCH_AHEAD + off`` bytes past ``p`` into L1
#define PHIFLASH_PREFETCH(p, off) \
    _mm_prefetch((const char *) (p) + PHIFLASH_PREFETCH_AHEAD + (off), _MM_HINT_T0)

// prefetch ``sizeof *p`` bytes (one block) PHIFLASH_PREFETCH_AHEAD bytes past ``p``: one line
// per 64 bytes of the block, rounded up. Consecutive blocks continue each other, so a block that
// straddles one more line has it fetched by its successor's first prefetch.
#define PHIFLASH_PREFETCH_BLOCK(p)                                                   \
    do {                                                                             \
        for (size_t phiflash_off_ = 0; phiflash_off_ < sizeof(*(p));                 \
             phiflash_off_ += PHIFLASH_CACHE_LINE) {                                 \
            PHIFLASH_PREFETCH(p, phiflash_off_);                                     \
        }                                                                            \
    } while (0)
