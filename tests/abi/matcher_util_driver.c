/* native/matcher_util.h's platform lines (the coarse clock, the prefetch hint) built for
 * Windows with mingw-w64 and run under Wine, beside the host build: prints
 * "<the clock advanced over a 60 ms sleep> <ctz of 2^40> <popcount of 0xF0F0> <eight
 * characters packed into a word in order and lowered, as the fold does> <the first two bytes
 * of a 4-byte load, as the block scan takes its bigram, in hex>". */
#include <stdio.h>
#include "matcher_util.h"

#ifdef _WIN32
static void sleep_ms(unsigned n) { Sleep(n); }
#else
static void sleep_ms(unsigned n)
{
    struct timespec t = {0, (long)n * 1000000L};
    nanosleep(&t, NULL);
}
#endif

int main(void)
{
    static unsigned char buf[1 << 16];
    static const char up[] = "AZ@[`az{";
    char low[9] = {0};
    uint64_t t0, t1, w = 0;
    int k;
    for (k = 0; k < 8; k++)
        w |= MT_BYTE_AT((unsigned char)up[k], k);
    w = mt_lower8(w);
    memcpy(low, &w, 8);
    mt_prefetch_range(buf, sizeof buf);
    t0 = mt_tick_ms();
    sleep_ms(60);
    t1 = mt_tick_ms();
    printf("%d %d %d %s %x\n", (int)(t1 - t0 >= 30 && t1 - t0 < 10000), mt_ctz64((uint64_t)1 << 40),
           mt_popcount64(0xF0F0u), low, MT_LO16(mt_load32((const unsigned char *)"abcd")));
    return 0;
}
