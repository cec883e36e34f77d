/* A fake of the Win32 calls the ETW source makes, for the test suite on Linux.
 *
 * Exports the advapi32 (StartTraceW, ControlTraceW, EnableTraceEx2, OpenTraceW, ProcessTrace,
 * CloseTrace, token and account calls), kernel32 (GetLogicalDrives, QueryDosDeviceW,
 * OpenProcess, CloseHandle, LocalFree) and ntdll (NtQueryInformationProcess) entry points with
 * the Windows x64 signatures in fixed-width types, and what pywintrace 0.2.0 resolves when it is
 * imported: ole32's GUID calls (CLSIDFromString, StringFromCLSID, CoTaskMemFree, ...), the TDH
 * functions and ConvertSidToStringSidW.  The tests load pywintrace with its ctypes.windll and
 * ctypes.oledll pointing here (tests/fake_win32.py).  Every structure is read and written at the
 * offsets of win64_layout.h, which tests/abi/gen_layout.py generates from the mingw-w64 headers:
 * no offset is typed here.  Strings are UTF-16LE as on Windows.  The "last error" is errno
 * (the tests load this library with use_errno, the twin of use_last_error).
 *
 * The fake enforces the documented preconditions it can check (a zeroed EVENT_TRACE_PROPERTIES
 * for ControlTrace, the buffer sizes, the ProcessTraceMode flags) and models two documented
 * behaviours: EnableTraceEx2 with Timeout 0 returns before the enable is applied, and a stopped
 * session ends its consumers.  The fake_* functions and variables script it and read its state.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "win64_layout.h"

#define EXPORT __attribute__((visibility("default")))

/* ---- scripting ------------------------------------------------------------------------- */
EXPORT int64_t fake_start_fail_status = 0;   /* StartTrace returns this ... */
EXPORT int64_t fake_start_fail_count = 0;    /* ... this many times */
EXPORT int64_t fake_open_fail = 0;           /* OpenTrace fails with this last error */
EXPORT int64_t fake_open_invalid_32 = 0;     /* ... returning the 32-bit invalid handle form */
EXPORT int64_t fake_process_trace_status = -1; /* >= 0: ProcessTrace returns it at once */
EXPORT int64_t fake_enable_async = 1;        /* Timeout 0: the enable is applied later */
EXPORT int64_t fake_lookup_delay_ms = 0;     /* LookupAccountSidW waits (a slow DC) */
EXPORT int64_t fake_open_handles = 0;        /* process/token handles not closed */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

static char logbuf[1 << 16];
static size_t loglen;

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#include <stdarg.h>
static void logf_(const char *fmt, ...)
{
    va_list ap;
    int n;
    if (loglen >= sizeof logbuf - 256)
        return;
    va_start(ap, fmt);
    n = vsnprintf(logbuf + loglen, sizeof logbuf - loglen - 1, fmt, ap);
    va_end(ap);
    if (n > 0)
        loglen += (size_t)n;
    logbuf[loglen++] = '\n';
    logbuf[loglen] = 0;
}

/* ---- memory at the Windows offsets ------------------------------------------------------ */

static uint32_t g32(const void *p, size_t o) { uint32_t v; memcpy(&v, (const char *)p + o, 4); return v; }
static uint64_t g64(const void *p, size_t o) { uint64_t v; memcpy(&v, (const char *)p + o, 8); return v; }
static void p8(void *p, size_t o, uint8_t v) { memcpy((char *)p + o, &v, 1); }
static void p16(void *p, size_t o, uint16_t v) { memcpy((char *)p + o, &v, 2); }
static void p32(void *p, size_t o, uint32_t v) { memcpy((char *)p + o, &v, 4); }
static void p64(void *p, size_t o, uint64_t v) { memcpy((char *)p + o, &v, 8); }
static void *gptr(const void *p, size_t o) { void *v; memcpy(&v, (const char *)p + o, sizeof v); return v; }
static void pptr(void *p, size_t o, const void *v) { memcpy((char *)p + o, &v, sizeof v); }

/* UTF-16LE (NUL-terminated) -> ASCII, '?' for the rest; at most n-1 characters. */
static void narrow(const uint16_t *w, char *out, size_t n)
{
    size_t i = 0;
    if (w)
        for (; w[i] && i + 1 < n; i++)
            out[i] = w[i] < 128 ? (char)w[i] : '?';
    out[i] = 0;
}

static size_t widen(const char *s, uint16_t *out, size_t cap)
{
    size_t i = 0;
    for (; s[i] && i + 1 < cap; i++)
        out[i] = (uint8_t)s[i];
    out[i] = 0;
    return i;
}

static void set_error(int e) { errno = e; }

#define ERROR_INVALID_HANDLE 6
#define ERROR_BAD_LENGTH 24
#define ERROR_INSUFFICIENT_BUFFER 122
#define ERROR_NONE_MAPPED 1332
#define ERROR_INVALID_SID 1337

/* ---- sessions --------------------------------------------------------------------------- */
#define MAXS 16
#define MAXC 16

typedef struct session {
    int used;
    char name[256];
    uint64_t handle;
    uint8_t guid[16];
    uint32_t buffer_kb, min_buffers, max_buffers, mode, flush_timer, enable_flags, client_context;
    uint32_t events_lost, rt_buffers_lost;
    int enable_state; /* 0 none, 1 requested (not applied yet), 2 applied */
    uint8_t level;
    uint64_t any;
    uint32_t flushes, rundowns, rundowns_lost, stopped_consumers;
} session;

typedef struct record {
    struct record *next;
    char session[256];
    uint8_t guid[16];
    uint16_t id, flags, len;
    uint8_t version, opcode;
    uint32_t pid, tid;
    int64_t ts;
    uint8_t payload[];
} record;

typedef struct consumer {
    int used;
    uint64_t handle;
    char session[256];
    void (*callback)(void *);
    void *context;
    int closed, processing;
} consumer;

static session sessions[MAXS];
static consumer consumers[MAXC];
static record *queue_head, *queue_tail;
static uint64_t next_handle = 0x1000;
static int delivering;

static session *find_session(const char *name)
{
    int i;
    for (i = 0; i < MAXS; i++)
        if (sessions[i].used && strcmp(sessions[i].name, name) == 0)
            return &sessions[i];
    return NULL;
}

static session *session_by_handle(uint64_t h)
{
    int i;
    for (i = 0; i < MAXS; i++)
        if (sessions[i].used && sessions[i].handle == h)
            return &sessions[i];
    return NULL;
}

static consumer *consumer_by_handle(uint64_t h)
{
    int i;
    for (i = 0; i < MAXC; i++)
        if (consumers[i].used && consumers[i].handle == h)
            return &consumers[i];
    return NULL;
}

EXPORT void fake_reset(void)
{
    record *r;
    pthread_mutex_lock(&mu);
    memset(sessions, 0, sizeof sessions);
    memset(consumers, 0, sizeof consumers);
    while ((r = queue_head) != NULL) {
        queue_head = r->next;
        free(r);
    }
    queue_tail = NULL;
    loglen = 0;
    logbuf[0] = 0;
    fake_start_fail_status = fake_start_fail_count = fake_open_fail = fake_open_invalid_32 = 0;
    fake_process_trace_status = -1;
    fake_enable_async = 1;
    fake_lookup_delay_ms = 0;
    fake_open_handles = 0;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

EXPORT size_t fake_log(char *out, size_t n)
{
    size_t k;
    pthread_mutex_lock(&mu);
    k = loglen < n - 1 ? loglen : n - 1;
    memcpy(out, logbuf, k);
    out[k] = 0;
    pthread_mutex_unlock(&mu);
    return k;
}

/* A session's state by field name; -1 when there is no such session or field. */
EXPORT int64_t fake_session_get(const char *name, const char *field)
{
    int64_t v = -1;
    session *s;
    pthread_mutex_lock(&mu);
    s = find_session(name);
    if (s) {
        if (!strcmp(field, "BufferSize")) v = s->buffer_kb;
        else if (!strcmp(field, "MinimumBuffers")) v = s->min_buffers;
        else if (!strcmp(field, "MaximumBuffers")) v = s->max_buffers;
        else if (!strcmp(field, "LogFileMode")) v = s->mode;
        else if (!strcmp(field, "FlushTimer")) v = s->flush_timer;
        else if (!strcmp(field, "EnableFlags")) v = s->enable_flags;
        else if (!strcmp(field, "ClientContext")) v = s->client_context;
        else if (!strcmp(field, "EventsLost")) v = s->events_lost;
        else if (!strcmp(field, "RealTimeBuffersLost")) v = s->rt_buffers_lost;
        else if (!strcmp(field, "enable_state")) v = s->enable_state;
        else if (!strcmp(field, "level")) v = s->level;
        else if (!strcmp(field, "keywords")) v = (int64_t)s->any;
        else if (!strcmp(field, "flushes")) v = s->flushes;
        else if (!strcmp(field, "rundowns")) v = s->rundowns;
        else if (!strcmp(field, "rundowns_lost")) v = s->rundowns_lost;
    }
    pthread_mutex_unlock(&mu);
    return v;
}

EXPORT int fake_session_set(const char *name, const char *field, int64_t value)
{
    session *s;
    int rc = -1;
    pthread_mutex_lock(&mu);
    s = find_session(name);
    if (s) {
        rc = 0;
        if (!strcmp(field, "EventsLost")) s->events_lost = (uint32_t)value;
        else if (!strcmp(field, "RealTimeBuffersLost")) s->rt_buffers_lost = (uint32_t)value;
        else rc = -1;
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

/* A session that another program started (a stale session, or `logman start`). */
EXPORT void fake_add_session(const char *name)
{
    int i;
    pthread_mutex_lock(&mu);
    for (i = 0; i < MAXS; i++)
        if (!sessions[i].used) {
            memset(&sessions[i], 0, sizeof sessions[i]);
            sessions[i].used = 1;
            snprintf(sessions[i].name, sizeof sessions[i].name, "%s", name);
            sessions[i].handle = next_handle++;
            sessions[i].events_lost = 99;
            break;
        }
    pthread_mutex_unlock(&mu);
}

/* Queue one record for the consumers of `name`; they receive it in ProcessTrace. */
EXPORT int fake_push(const char *name, const uint8_t *guid, uint16_t id, uint8_t version, uint8_t opcode,
                     uint32_t pid, uint32_t tid, int64_t ts, uint16_t flags, const uint8_t *payload,
                     uint16_t len)
{
    record *r = malloc(sizeof *r + len);
    if (!r)
        return -1;
    memset(r, 0, sizeof *r);
    snprintf(r->session, sizeof r->session, "%s", name);
    memcpy(r->guid, guid, 16);
    r->id = id;
    r->version = version;
    r->opcode = opcode;
    r->pid = pid;
    r->tid = tid;
    r->ts = ts;
    r->flags = flags;
    r->len = len;
    if (len)
        memcpy(r->payload, payload, len);
    pthread_mutex_lock(&mu);
    if (queue_tail)
        queue_tail->next = r;
    else
        queue_head = r;
    queue_tail = r;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    return 0;
}

/* Wait until every queued record has been delivered (or timeout_ms); 0 when drained. */
EXPORT int fake_wait_drained(int timeout_ms)
{
    struct timespec ts;
    int rc = 0;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&mu);
    while ((queue_head || delivering) && rc == 0)
        rc = pthread_cond_timedwait(&cv, &mu, &ts);
    rc = (queue_head || delivering) ? -1 : 0;
    pthread_mutex_unlock(&mu);
    return rc;
}

/* ---- advapi32: ETW control -------------------------------------------------------------- */

/* ControlTrace and StartTrace write the session's state back into the caller's block. */
static void write_back(void *props, session *s)
{
    size_t w = WL_EVENT_TRACE_PROPERTIES__Wnode;
    uint32_t name_off = g32(props, WL_EVENT_TRACE_PROPERTIES__LoggerNameOffset);
    uint32_t bufsize = g32(props, w + WL_WNODE_HEADER__BufferSize);
    p64(props, w + WL_WNODE_HEADER__HistoricalContext, s->handle);
    memcpy((char *)props + w + WL_WNODE_HEADER__Guid, s->guid, 16);
    p32(props, WL_EVENT_TRACE_PROPERTIES__BufferSize, s->buffer_kb);
    p32(props, WL_EVENT_TRACE_PROPERTIES__MinimumBuffers, s->min_buffers);
    p32(props, WL_EVENT_TRACE_PROPERTIES__MaximumBuffers, s->max_buffers);
    p32(props, WL_EVENT_TRACE_PROPERTIES__LogFileMode, s->mode);
    p32(props, WL_EVENT_TRACE_PROPERTIES__FlushTimer, s->flush_timer);
    p32(props, WL_EVENT_TRACE_PROPERTIES__EnableFlags, s->enable_flags);
    p32(props, WL_EVENT_TRACE_PROPERTIES__NumberOfBuffers, s->min_buffers);
    p32(props, WL_EVENT_TRACE_PROPERTIES__FreeBuffers, s->min_buffers);
    p32(props, WL_EVENT_TRACE_PROPERTIES__EventsLost, s->events_lost);
    p32(props, WL_EVENT_TRACE_PROPERTIES__BuffersWritten, s->flushes);
    p32(props, WL_EVENT_TRACE_PROPERTIES__RealTimeBuffersLost, s->rt_buffers_lost);
    pptr(props, WL_EVENT_TRACE_PROPERTIES__LoggerThreadId, (void *)(uintptr_t)0x4242);
    if (name_off >= WL_EVENT_TRACE_PROPERTIES__size && name_off + 2 * (strlen(s->name) + 1) <= bufsize)
        widen(s->name, (uint16_t *)((char *)props + name_off), strlen(s->name) + 1);
}

static int props_sane(const void *props)
{
    uint32_t size = g32(props, WL_EVENT_TRACE_PROPERTIES__Wnode + WL_WNODE_HEADER__BufferSize);
    uint32_t name_off = g32(props, WL_EVENT_TRACE_PROPERTIES__LoggerNameOffset);
    return size >= WL_EVENT_TRACE_PROPERTIES__size && name_off >= WL_EVENT_TRACE_PROPERTIES__size &&
           name_off < size;
}

EXPORT uint32_t StartTraceW(uint64_t *handle, const uint16_t *name_w, void *props)
{
    char name[256];
    session *s = NULL;
    int i;
    size_t w = WL_EVENT_TRACE_PROPERTIES__Wnode;
    uint32_t rc = 0;
    narrow(name_w, name, sizeof name);
    pthread_mutex_lock(&mu);
    logf_("StartTraceW name=%s BufferSize=%u MinimumBuffers=%u MaximumBuffers=%u LogFileMode=0x%x "
          "FlushTimer=%u EnableFlags=0x%x ClientContext=%u WnodeFlags=0x%x", name,
          g32(props, WL_EVENT_TRACE_PROPERTIES__BufferSize), g32(props, WL_EVENT_TRACE_PROPERTIES__MinimumBuffers),
          g32(props, WL_EVENT_TRACE_PROPERTIES__MaximumBuffers), g32(props, WL_EVENT_TRACE_PROPERTIES__LogFileMode),
          g32(props, WL_EVENT_TRACE_PROPERTIES__FlushTimer), g32(props, WL_EVENT_TRACE_PROPERTIES__EnableFlags),
          g32(props, w + WL_WNODE_HEADER__ClientContext), g32(props, w + WL_WNODE_HEADER__Flags));
    if (!handle || !name_w || !props) {
        rc = 87;
    } else if (!props_sane(props)) {
        rc = ERROR_BAD_LENGTH;
    } else if (!(g32(props, w + WL_WNODE_HEADER__Flags) & WL_WNODE_FLAG_TRACED_GUID) ||
               !(g32(props, WL_EVENT_TRACE_PROPERTIES__LogFileMode) & WL_EVENT_TRACE_REAL_TIME_MODE)) {
        rc = 87;
    } else if (fake_start_fail_count > 0) {
        fake_start_fail_count--;
        rc = (uint32_t)fake_start_fail_status;
    } else if (find_session(name)) {
        rc = WL_ERROR_ALREADY_EXISTS;
    } else {
        for (i = 0; i < MAXS && sessions[i].used; i++)
            ;
        if (i == MAXS) {
            rc = 1450; /* ERROR_NO_SYSTEM_RESOURCES */
        } else {
            s = &sessions[i];
            memset(s, 0, sizeof *s);
            s->used = 1;
            snprintf(s->name, sizeof s->name, "%s", name);
            s->handle = next_handle++;
            memcpy(s->guid, &s->handle, sizeof s->handle);
            s->guid[15] = 0xE7;
            s->buffer_kb = g32(props, WL_EVENT_TRACE_PROPERTIES__BufferSize);
            s->min_buffers = g32(props, WL_EVENT_TRACE_PROPERTIES__MinimumBuffers);
            s->max_buffers = g32(props, WL_EVENT_TRACE_PROPERTIES__MaximumBuffers);
            s->mode = g32(props, WL_EVENT_TRACE_PROPERTIES__LogFileMode);
            s->flush_timer = g32(props, WL_EVENT_TRACE_PROPERTIES__FlushTimer);
            s->enable_flags = g32(props, WL_EVENT_TRACE_PROPERTIES__EnableFlags);
            s->client_context = g32(props, w + WL_WNODE_HEADER__ClientContext);
            *handle = s->handle;
            write_back(props, s);
        }
    }
    logf_("  -> %u", rc);
    pthread_mutex_unlock(&mu);
    return rc;
}

EXPORT uint32_t ControlTraceW(uint64_t handle, const uint16_t *name_w, void *props, uint32_t code)
{
    char name[256];
    session *s;
    size_t w = WL_EVENT_TRACE_PROPERTIES__Wnode;
    const uint8_t *guid;
    int i, dirty = 0;
    uint32_t rc = 0;
    narrow(name_w, name, sizeof name);
    pthread_mutex_lock(&mu);
    logf_("ControlTraceW handle=%llu name=%s code=%u", (unsigned long long)handle, name, code);
    if (!props || !props_sane(props)) {
        rc = ERROR_BAD_LENGTH;
        goto out;
    }
    /* The block must come in zeroed but for its sizes and offsets: what ETW writes back from
     * an earlier call (the handle, the session GUID, the counters) must not be there. */
    guid = (const uint8_t *)props + w + WL_WNODE_HEADER__Guid;
    for (i = 0; i < 16; i++)
        dirty |= guid[i];
    dirty |= g64(props, w + WL_WNODE_HEADER__HistoricalContext) != 0;
    dirty |= g32(props, WL_EVENT_TRACE_PROPERTIES__EventsLost) != 0;
    dirty |= g32(props, WL_EVENT_TRACE_PROPERTIES__NumberOfBuffers) != 0;
    dirty |= gptr(props, WL_EVENT_TRACE_PROPERTIES__LoggerThreadId) != NULL;
    if (dirty) {
        logf_("  properties not zeroed on input");
        rc = 87;
        goto out;
    }
    s = handle ? session_by_handle(handle) : find_session(name);
    if (!s) {
        rc = WL_ERROR_WMI_INSTANCE_NOT_FOUND;
        goto out;
    }
    if (code == WL_EVENT_TRACE_CONTROL_FLUSH)
        s->flushes++;
    write_back(props, s);
    if (code == WL_EVENT_TRACE_CONTROL_STOP) {
        s->used = 0; /* its consumers see it gone and return */
        pthread_cond_broadcast(&cv);
    } else if (code != WL_EVENT_TRACE_CONTROL_QUERY && code != WL_EVENT_TRACE_CONTROL_FLUSH) {
        rc = 87;
    }
out:
    logf_("  -> %u", rc);
    pthread_mutex_unlock(&mu);
    return rc;
}

/* The GUID as text, read at the Windows offsets: {XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX}. */
static void guid_text(const uint8_t *g, char *out, size_t n)
{
    uint16_t d2, d3;
    const uint8_t *d4 = g + WL_GUID__Data4;
    memcpy(&d2, g + WL_GUID__Data2, 2);
    memcpy(&d3, g + WL_GUID__Data3, 2);
    snprintf(out, n, "{%08X-%04X-%04X-%02X%02X-%02X%02X%02X%02X%02X%02X}", g32(g, WL_GUID__Data1), d2, d3,
             d4[0], d4[1], d4[2], d4[3], d4[4], d4[5], d4[6], d4[7]);
}

EXPORT uint32_t EnableTraceEx2(uint64_t handle, const uint8_t *guid, uint32_t code, uint8_t level,
                               uint64_t any, uint64_t all, uint32_t timeout, void *params)
{
    session *s;
    char g[40] = "-";
    uint32_t rc = 0;
    pthread_mutex_lock(&mu);
    if (guid)
        guid_text(guid, g, sizeof g);
    logf_("EnableTraceEx2 handle=%llu provider=%s code=%u level=%u any=0x%llx all=0x%llx timeout=%u params=%s",
          (unsigned long long)handle, g, code, level, (unsigned long long)any, (unsigned long long)all, timeout,
          params ? "set" : "null");
    s = session_by_handle(handle);
    if (!s || !guid) {
        rc = ERROR_INVALID_HANDLE;
    } else if (code == WL_EVENT_CONTROL_CODE_ENABLE_PROVIDER) {
        s->level = level;
        s->any = any;
        /* Timeout 0: asynchronous; the provider applies the enable later. */
        s->enable_state = (timeout == 0 && fake_enable_async) ? 1 : 2;
    } else if (code == WL_EVENT_CONTROL_CODE_CAPTURE_STATE) {
        if (s->enable_state == 2)
            s->rundowns++;
        else
            s->rundowns_lost++; /* reached the provider before the enable did */
    } else {
        rc = 87;
    }
    logf_("  -> %u", rc);
    pthread_mutex_unlock(&mu);
    return rc;
}

EXPORT uint64_t OpenTraceW(void *logfile)
{
    char name[256];
    uint32_t mode;
    void *cb;
    consumer *c = NULL;
    int i;
    uint64_t invalid = fake_open_invalid_32 ? 0x00000000FFFFFFFFull : 0xFFFFFFFFFFFFFFFFull;
    pthread_mutex_lock(&mu);
    narrow((const uint16_t *)gptr(logfile, WL_EVENT_TRACE_LOGFILEW__LoggerName), name, sizeof name);
    mode = g32(logfile, WL_EVENT_TRACE_LOGFILEW__ProcessTraceMode);
    cb = gptr(logfile, WL_EVENT_TRACE_LOGFILEW__EventRecordCallback);
    logf_("OpenTraceW name=%s ProcessTraceMode=0x%x callback=%s", name, mode, cb ? "set" : "null");
    if (fake_open_fail) {
        set_error((int)fake_open_fail);
        logf_("  -> invalid (%lld)", (long long)fake_open_fail);
        pthread_mutex_unlock(&mu);
        return invalid;
    }
    if (!(mode & WL_PROCESS_TRACE_MODE_REAL_TIME) || !(mode & WL_PROCESS_TRACE_MODE_EVENT_RECORD) || !cb) {
        set_error(87);
        pthread_mutex_unlock(&mu);
        return invalid;
    }
    if (!find_session(name)) {
        set_error((int)WL_ERROR_WMI_INSTANCE_NOT_FOUND);
        pthread_mutex_unlock(&mu);
        return invalid;
    }
    for (i = 0; i < MAXC && consumers[i].used; i++)
        ;
    if (i == MAXC) {
        set_error(1450);
        pthread_mutex_unlock(&mu);
        return invalid;
    }
    c = &consumers[i];
    memset(c, 0, sizeof *c);
    c->used = 1;
    c->handle = next_handle++;
    snprintf(c->session, sizeof c->session, "%s", name);
    memcpy(&c->callback, &cb, sizeof cb);
    c->context = gptr(logfile, WL_EVENT_TRACE_LOGFILEW__Context);
    p32(logfile, WL_EVENT_TRACE_LOGFILEW__LogfileHeader + WL_TRACE_LOGFILE_HEADER__PointerSize, 8);
    logf_("  -> consumer %llu", (unsigned long long)c->handle);
    pthread_mutex_unlock(&mu);
    return c->handle;
}

static void deliver(consumer *c, record *r)
{
    size_t h = WL_EVENT_RECORD__EventHeader, d = h + WL_EVENT_HEADER__EventDescriptor;
    uint8_t rec[WL_EVENT_RECORD__size];
    uint8_t *data = malloc(r->len ? r->len : 1);
    memset(rec, 0, sizeof rec);
    if (r->len)
        memcpy(data, r->payload, r->len);
    p16(rec, h + WL_EVENT_HEADER__Size, (uint16_t)WL_EVENT_HEADER__size);
    p16(rec, h + WL_EVENT_HEADER__Flags, r->flags);
    p32(rec, h + WL_EVENT_HEADER__ThreadId, r->tid);
    p32(rec, h + WL_EVENT_HEADER__ProcessId, r->pid);
    p64(rec, h + WL_EVENT_HEADER__TimeStamp, (uint64_t)r->ts);
    memcpy(rec + h + WL_EVENT_HEADER__ProviderId, r->guid, 16);
    p16(rec, d + WL_EVENT_DESCRIPTOR__Id, r->id);
    p8(rec, d + WL_EVENT_DESCRIPTOR__Version, r->version);
    p8(rec, d + WL_EVENT_DESCRIPTOR__Channel, 16);
    p8(rec, d + WL_EVENT_DESCRIPTOR__Level, 4);
    p8(rec, d + WL_EVENT_DESCRIPTOR__Opcode, r->opcode);
    p16(rec, d + WL_EVENT_DESCRIPTOR__Task, r->id);
    p64(rec, d + WL_EVENT_DESCRIPTOR__Keyword, 0x8000000000000010ull);
    p32(rec, h + WL_EVENT_HEADER__KernelTime, 0xFFFFFFFFu);
    p32(rec, h + WL_EVENT_HEADER__UserTime, 0xFFFFFFFFu);
    p16(rec, WL_EVENT_RECORD__ExtendedDataCount, 0);
    p16(rec, WL_EVENT_RECORD__UserDataLength, r->len);
    pptr(rec, WL_EVENT_RECORD__UserData, r->len ? data : NULL);
    pptr(rec, WL_EVENT_RECORD__UserContext, c->context);
    c->callback(rec);
    /* The buffer belongs to ETW again after the callback: anything kept must be a copy. */
    memset(data, 0xAA, r->len ? r->len : 1);
    free(data);
}

EXPORT uint32_t ProcessTrace(uint64_t *handles, uint32_t count, void *start, void *end)
{
    consumer *c;
    session *s;
    record *r, **pp;
    uint32_t rc = 0;
    (void)start;
    (void)end;
    pthread_mutex_lock(&mu);
    logf_("ProcessTrace handle=%llu count=%u", handles ? (unsigned long long)handles[0] : 0ull, count);
    c = (handles && count == 1) ? consumer_by_handle(handles[0]) : NULL;
    if (!c) {
        pthread_mutex_unlock(&mu);
        return ERROR_INVALID_HANDLE;
    }
    if (fake_process_trace_status >= 0) {
        rc = (uint32_t)fake_process_trace_status;
        logf_("  -> %u (at once)", rc);
        pthread_mutex_unlock(&mu);
        return rc;
    }
    c->processing = 1;
    s = find_session(c->session);
    if (s && s->enable_state == 1)
        s->enable_state = 2; /* the asynchronous enable has been applied by now */
    for (;;) {
        for (pp = &queue_head; *pp && strcmp((*pp)->session, c->session) != 0; pp = &(*pp)->next)
            ;
        if (*pp && !c->closed) {
            r = *pp;
            *pp = r->next;
            if (queue_tail == r) {
                record *t = queue_head;
                while (t && t->next)
                    t = t->next;
                queue_tail = t;
            }
            delivering++;
            pthread_mutex_unlock(&mu);
            deliver(c, r);
            free(r);
            pthread_mutex_lock(&mu);
            delivering--;
            pthread_cond_broadcast(&cv);
            continue;
        }
        if (c->closed || !find_session(c->session))
            break;
        pthread_cond_wait(&cv, &mu);
    }
    c->processing = 0;
    c->used = c->closed ? 0 : c->used;
    logf_("ProcessTrace handle=%llu -> 0", (unsigned long long)handles[0]);
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    return 0;
}

EXPORT uint32_t CloseTrace(uint64_t handle)
{
    consumer *c;
    uint32_t rc = 0;
    pthread_mutex_lock(&mu);
    c = consumer_by_handle(handle);
    if (!c) {
        rc = ERROR_INVALID_HANDLE;
    } else {
        c->closed = 1;
        if (c->processing)
            rc = WL_ERROR_CTX_CLOSE_PENDING;
        else
            c->used = 0;
        pthread_cond_broadcast(&cv);
    }
    logf_("CloseTrace handle=%llu -> %u", (unsigned long long)handle, rc);
    pthread_mutex_unlock(&mu);
    return rc;
}

/* ---- processes, tokens, accounts, devices ----------------------------------------------- */
#define MAXP 32
typedef struct fproc {
    int used;
    uint32_t pid, integrity_rid;
    int denied;
    uint16_t cmdline[4096];
    size_t cmdlen;
} fproc;
static fproc procs[MAXP];

typedef struct faccount {
    int used;
    char sid[128], domain[64], name[64];
} faccount;
static faccount accounts[16];

typedef struct fdevice {
    int used;
    char letter;
    char target[256];
} fdevice;
static fdevice devices[26];

EXPORT void fake_add_process(uint32_t pid, const uint16_t *cmdline, uint32_t cmdlen, uint32_t rid, int denied)
{
    int i;
    pthread_mutex_lock(&mu);
    for (i = 0; i < MAXP && procs[i].used; i++)
        ;
    if (i < MAXP) {
        procs[i].used = 1;
        procs[i].pid = pid;
        procs[i].integrity_rid = rid;
        procs[i].denied = denied;
        procs[i].cmdlen = cmdlen < 4096 ? cmdlen : 4096;
        memcpy(procs[i].cmdline, cmdline, procs[i].cmdlen * 2);
    }
    pthread_mutex_unlock(&mu);
}

EXPORT void fake_add_account(const char *sid, const char *domain, const char *name)
{
    int i;
    pthread_mutex_lock(&mu);
    for (i = 0; i < 16 && accounts[i].used; i++)
        ;
    if (i < 16) {
        accounts[i].used = 1;
        snprintf(accounts[i].sid, sizeof accounts[i].sid, "%s", sid);
        snprintf(accounts[i].domain, sizeof accounts[i].domain, "%s", domain);
        snprintf(accounts[i].name, sizeof accounts[i].name, "%s", name);
    }
    pthread_mutex_unlock(&mu);
}

EXPORT void fake_add_device(char letter, const char *target)
{
    int i = letter - 'A';
    if (i < 0 || i >= 26)
        return;
    pthread_mutex_lock(&mu);
    devices[i].used = 1;
    devices[i].letter = letter;
    snprintf(devices[i].target, sizeof devices[i].target, "%s", target);
    pthread_mutex_unlock(&mu);
}

EXPORT void fake_clear_world(void)
{
    pthread_mutex_lock(&mu);
    memset(procs, 0, sizeof procs);
    memset(accounts, 0, sizeof accounts);
    memset(devices, 0, sizeof devices);
    pthread_mutex_unlock(&mu);
}

/* Handles: 0x10000 + index for processes, 0x20000 + index for tokens. */
EXPORT uint32_t GetLogicalDrives(void)
{
    uint32_t mask = 0;
    int i;
    for (i = 0; i < 26; i++)
        if (devices[i].used)
            mask |= 1u << i;
    return mask;
}

EXPORT uint32_t QueryDosDeviceW(const uint16_t *name_w, uint16_t *out, uint32_t max)
{
    char name[16];
    size_t n;
    narrow(name_w, name, sizeof name);
    if (strlen(name) != 2 || name[1] != ':' || name[0] < 'A' || name[0] > 'Z' || !devices[name[0] - 'A'].used) {
        set_error(2);
        return 0;
    }
    n = strlen(devices[name[0] - 'A'].target);
    if (n + 2 > max) {
        set_error(ERROR_INSUFFICIENT_BUFFER);
        return 0;
    }
    widen(devices[name[0] - 'A'].target, out, n + 1);
    out[n + 1] = 0; /* MULTI_SZ: a second NUL */
    return (uint32_t)(n + 2);
}

EXPORT void *OpenProcess(uint32_t access, int32_t inherit, uint32_t pid)
{
    int i;
    (void)inherit;
    if (!(access & WL_PROCESS_QUERY_LIMITED_INFORMATION)) {
        set_error(87);
        return NULL;
    }
    for (i = 0; i < MAXP; i++)
        if (procs[i].used && procs[i].pid == pid) {
            if (procs[i].denied) {
                set_error(5);
                return NULL;
            }
            __sync_fetch_and_add(&fake_open_handles, 1);
            return (void *)(uintptr_t)(0x10000 + i);
        }
    set_error(87);
    return NULL;
}

EXPORT int32_t CloseHandle(void *h)
{
    uintptr_t v = (uintptr_t)h;
    if ((v & ~0xFFFFu) != 0x10000 && (v & ~0xFFFFu) != 0x20000) {
        set_error(ERROR_INVALID_HANDLE);
        return 0;
    }
    __sync_fetch_and_sub(&fake_open_handles, 1);
    return 1;
}

static fproc *proc_of(void *h, uintptr_t base)
{
    uintptr_t v = (uintptr_t)h;
    if ((v & ~0xFFFFu) != base || (v & 0xFFFF) >= MAXP || !procs[v & 0xFFFF].used)
        return NULL;
    return &procs[v & 0xFFFF];
}

EXPORT uint32_t NtQueryInformationProcess(void *h, uint32_t cls, void *buf, uint32_t len, uint32_t *ret)
{
    fproc *p = proc_of(h, 0x10000);
    uint32_t need;
    if (!p)
        return 0xC0000008u; /* STATUS_INVALID_HANDLE */
    if (cls != 60)
        return 0xC0000003u; /* STATUS_INVALID_INFO_CLASS */
    need = (uint32_t)(WL_UNICODE_STRING__size + p->cmdlen * 2);
    if (ret)
        *ret = need;
    if (len < need)
        return WL_STATUS_INFO_LENGTH_MISMATCH;
    p16(buf, WL_UNICODE_STRING__Length, (uint16_t)(p->cmdlen * 2));
    p16(buf, WL_UNICODE_STRING__MaximumLength, (uint16_t)(p->cmdlen * 2));
    pptr(buf, WL_UNICODE_STRING__Buffer, (char *)buf + WL_UNICODE_STRING__size);
    memcpy((char *)buf + WL_UNICODE_STRING__size, p->cmdline, p->cmdlen * 2);
    return 0;
}

EXPORT int32_t OpenProcessToken(void *h, uint32_t access, void **token)
{
    fproc *p = proc_of(h, 0x10000);
    if (!p || !(access & WL_TOKEN_QUERY)) {
        set_error(ERROR_INVALID_HANDLE);
        return 0;
    }
    __sync_fetch_and_add(&fake_open_handles, 1);
    *token = (void *)(uintptr_t)(0x20000 + (p - procs));
    return 1;
}

EXPORT int32_t GetTokenInformation(void *token, uint32_t cls, void *buf, uint32_t len, uint32_t *ret)
{
    fproc *p = proc_of(token, 0x20000);
    uint32_t need = WL_TOKEN_MANDATORY_LABEL__size + 12;
    uint8_t *sid;
    if (!p || cls != WL_TokenIntegrityLevel) {
        set_error(87);
        return 0;
    }
    *ret = need;
    if (len < need) {
        set_error(ERROR_INSUFFICIENT_BUFFER);
        return 0;
    }
    sid = (uint8_t *)buf + WL_TOKEN_MANDATORY_LABEL__size;
    memset(buf, 0, need);
    pptr(buf, WL_TOKEN_MANDATORY_LABEL__Label, sid);        /* Label.Sid */
    p32(buf, WL_TOKEN_MANDATORY_LABEL__Label + sizeof(void *), 0x60); /* Label.Attributes */
    sid[0] = 1;
    sid[1] = 1;
    sid[7] = 16; /* SECURITY_MANDATORY_LABEL_AUTHORITY */
    p32(sid, 8, p->integrity_rid);
    return 1;
}

EXPORT uint8_t *GetSidSubAuthorityCount(uint8_t *sid) { return sid + 1; }
EXPORT uint32_t *GetSidSubAuthority(uint8_t *sid, uint32_t n) { return (uint32_t *)(sid + 8 + 4 * n); }

EXPORT int32_t ConvertStringSidToSidW(const uint16_t *text_w, void **out)
{
    char text[256], *p, *end;
    uint8_t *sid;
    unsigned long long auth;
    int n = 0;
    narrow(text_w, text, sizeof text);
    if (strncmp(text, "S-1-", 4) != 0) {
        set_error(ERROR_INVALID_SID);
        return 0;
    }
    sid = calloc(1, 8 + 4 * 15);
    p = text + 4;
    auth = strtoull(p, &end, 10);
    if (end == p) {
        free(sid);
        set_error(ERROR_INVALID_SID);
        return 0;
    }
    sid[0] = 1;
    sid[2] = (uint8_t)(auth >> 40);
    sid[3] = (uint8_t)(auth >> 32);
    sid[4] = (uint8_t)(auth >> 24);
    sid[5] = (uint8_t)(auth >> 16);
    sid[6] = (uint8_t)(auth >> 8);
    sid[7] = (uint8_t)auth;
    p = end;
    while (*p == '-' && n < 15) {
        unsigned long v = strtoul(p + 1, &end, 10);
        if (end == p + 1)
            break;
        p32(sid, 8 + 4 * (size_t)n, (uint32_t)v);
        n++;
        p = end;
    }
    if (*p) {
        free(sid);
        set_error(ERROR_INVALID_SID);
        return 0;
    }
    sid[1] = (uint8_t)n;
    *out = sid;
    return 1;
}

EXPORT void *LocalFree(void *p)
{
    free(p);
    return NULL;
}

EXPORT int32_t LookupAccountSidW(const uint16_t *system, const uint8_t *sid, uint16_t *name, uint32_t *cch_name,
                                 uint16_t *domain, uint32_t *cch_domain, uint32_t *use)
{
    char text[256];
    size_t len;
    int i, k;
    uint64_t auth = 0;
    (void)system;
    for (i = 2; i < 8; i++)
        auth = (auth << 8) | sid[i];
    len = (size_t)snprintf(text, sizeof text, "S-1-%llu", (unsigned long long)auth);
    for (k = 0; k < sid[1]; k++)
        len += (size_t)snprintf(text + len, sizeof text - len, "-%u", g32(sid, 8 + 4 * (size_t)k));
    if (fake_lookup_delay_ms > 0)
        usleep((useconds_t)fake_lookup_delay_ms * 1000);
    for (i = 0; i < 16; i++)
        if (accounts[i].used && strcmp(accounts[i].sid, text) == 0) {
            if (*cch_name <= strlen(accounts[i].name) || *cch_domain <= strlen(accounts[i].domain)) {
                *cch_name = (uint32_t)strlen(accounts[i].name) + 1;
                *cch_domain = (uint32_t)strlen(accounts[i].domain) + 1;
                set_error(ERROR_INSUFFICIENT_BUFFER);
                return 0;
            }
            *cch_name = (uint32_t)widen(accounts[i].name, name, *cch_name);
            *cch_domain = (uint32_t)widen(accounts[i].domain, domain, *cch_domain);
            *use = 1; /* SidTypeUser */
            return 1;
        }
    set_error(ERROR_NONE_MAPPED);
    return 0;
}

/* ---- ole32: the GUID calls of pywintrace's etw.GUID ---------------------------------------- */
#define S_OK 0
#define CO_E_CLASSSTRING ((int32_t)0x800401F3u)
#define REGDB_E_CLASSNOTREG ((int32_t)0x80040154u)

static int hexval(uint16_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* "{XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX}" (UTF-16LE) -> the GUID at the Windows offsets. */
EXPORT int32_t CLSIDFromString(const uint16_t *text, uint8_t *guid)
{
    static const char shape[] = "{........-....-....-....-............}";
    uint8_t raw[16];
    char printable[64];
    int i, k = 0, hi = -1;
    narrow(text, printable, sizeof printable);
    pthread_mutex_lock(&mu);
    logf_("CLSIDFromString %s", printable);
    pthread_mutex_unlock(&mu);
    if (!text || !guid)
        return CO_E_CLASSSTRING;
    for (i = 0; shape[i]; i++) {
        uint16_t c = text[i];
        if (shape[i] != '.') {
            if (c != (uint16_t)shape[i])
                return CO_E_CLASSSTRING;
            continue;
        }
        if (hexval(c) < 0)
            return CO_E_CLASSSTRING;
        if (hi < 0) {
            hi = hexval(c);
        } else {
            raw[k++] = (uint8_t)(hi << 4 | hexval(c));
            hi = -1;
        }
    }
    if (text[i] != 0)
        return CO_E_CLASSSTRING;
    /* raw holds the text's digits in order: Data1, Data2 and Data3 are little-endian integers. */
    p32(guid, WL_GUID__Data1, (uint32_t)raw[0] << 24 | (uint32_t)raw[1] << 16 | (uint32_t)raw[2] << 8 | raw[3]);
    p16(guid, WL_GUID__Data2, (uint16_t)(raw[4] << 8 | raw[5]));
    p16(guid, WL_GUID__Data3, (uint16_t)(raw[6] << 8 | raw[7]));
    memcpy(guid + WL_GUID__Data4, raw + 8, 8);
    return S_OK;
}

/* The GUID's text, in a buffer the caller frees with CoTaskMemFree. */
EXPORT int32_t StringFromCLSID(const uint8_t *guid, uint16_t **out)
{
    char text[40];
    uint16_t *w;
    guid_text(guid, text, sizeof text);
    w = malloc(sizeof text * 2);
    if (!w)
        return (int32_t)0x8007000Eu; /* E_OUTOFMEMORY */
    widen(text, w, sizeof text);
    *out = w;
    return S_OK;
}

EXPORT void CoTaskMemFree(void *p) { free(p); }

/* No registry here: a ProgID never resolves. */
EXPORT int32_t ProgIDFromCLSID(const uint8_t *guid, uint16_t **out)
{
    (void)guid;
    *out = NULL;
    return REGDB_E_CLASSNOTREG;
}

EXPORT int32_t CLSIDFromProgID(const uint16_t *progid, uint8_t *guid)
{
    (void)progid;
    (void)guid;
    return CO_E_CLASSSTRING;
}

EXPORT int32_t CoCreateGuid(uint8_t *guid)
{
    static uint64_t counter;
    uint64_t n = __sync_add_and_fetch(&counter, 1);
    memset(guid, 0, 16);
    p32(guid, WL_GUID__Data1, (uint32_t)n);
    p16(guid, WL_GUID__Data3, 0x4000);
    guid[WL_GUID__Data4] = 0x80;
    return S_OK;
}

/* ---- resolved by pywintrace at import, never called by the sensor ------------------------- */
/* Each logs its name and fails (ERROR_NOT_SUPPORTED as the TDH status; FALSE with that last
 * error for the BOOL call): a test checks that the log never shows one. */
#define ERROR_NOT_SUPPORTED 50
#define UNUSED_CALL(name, failure)                                                                \
    EXPORT uint32_t name(void)                                                                    \
    {                                                                                             \
        pthread_mutex_lock(&mu);                                                                  \
        logf_("%s (not used by the sensor)", #name);                                              \
        pthread_mutex_unlock(&mu);                                                                \
        set_error(ERROR_NOT_SUPPORTED);                                                           \
        return failure;                                                                           \
    }
UNUSED_CALL(TdhGetEventInformation, ERROR_NOT_SUPPORTED)
UNUSED_CALL(TdhGetPropertySize, ERROR_NOT_SUPPORTED)
UNUSED_CALL(TdhGetProperty, ERROR_NOT_SUPPORTED)
UNUSED_CALL(TdhGetEventMapInformation, ERROR_NOT_SUPPORTED)
UNUSED_CALL(TdhFormatProperty, ERROR_NOT_SUPPORTED)
UNUSED_CALL(TdhEnumerateProviderFieldInformation, ERROR_NOT_SUPPORTED)
UNUSED_CALL(ConvertSidToStringSidW, 0)
