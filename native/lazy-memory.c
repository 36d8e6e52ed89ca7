/*
 * Lazy guest memory for QEMU: a library preloaded into QEMU (LD_PRELOAD) that fills the guest's RAM
 * file on demand instead of having it materialized before QEMU starts.
 *
 * QEMU 7.2 cannot hand out a userfaultfd for its RAM, so this library wraps mmap: when QEMU maps
 * the machine's RAM file (memory-backend-file, share=on), it creates a userfaultfd in QEMU's own
 * process, registers the mapping for MISSING faults and starts a fault thread (and, when the page map
 * lists a working set, a prefetch thread that places it while the guest runs). A fault loads the
 * whole 256 KiB chunk around it, from (in this order) nothing (all-zero chunks), the boot template's
 * RAM file in tmpfs, or the snapshot store (a zstd seekable chunk file). Every chunk's XXH3-128 is
 * checked against the id the snapshot recorded before a byte of it reaches the guest; on any error
 * QEMU exits with a message (never runs with wrong memory). Served pages become part of the tmpfs
 * file, so a later snapshot reads them there; chunks never served are flagged in a status file so the
 * snapshot takes them from the snapshot they came from instead of reading holes as zeros.
 *
 * Inputs (written by src/snapshot/lazy-memory.ts; no JSON here): TORPOR_LAZY_MEMORY_MAP names a
 * binary page map, little-endian:
 *   0    "TORPMAP1"
 *   8    u64 memory size          16 u32 chunk size     20 u32 chunk count
 *   24   u32 prefetch count       28 u32 reserved
 *   64   four NUL-terminated paths of 1024 bytes each: the RAM file (to recognise its mapping),
 *        the store's chunks directory, the template's RAM file ("" = none), the status file
 *   4160 chunk count records of 48 bytes: u8 source (0 zero, 1 template, 2 store), 15 reserved,
 *        32 hex characters of the chunk id
 *   then prefetch count u32 chunk indices, placed by the prefetch thread in this order
 * The status file (created by the caller, size statusSize(chunk count)) is shared with the host:
 *   0 "TORPSTA1"   8 u32 state (0 waiting, 1 serving, 2 failed)   12 u32 chunk count
 *   16 u64 counters[16] (see enum counter)   144 error message (368 bytes)
 *   512 one byte per chunk: 1 once served (padded to 8)   then u32 pairs (chunk index, ms since
 *   start) in served order   then one byte per chunk: 1 once written since the last protect round
 *   (padded to 8)   then one byte per chunk: 1 while frozen (padded to 8)   then one byte per chunk:
 *   1 once a frozen chunk was copied to the copy file (padded to 8)
 * Beside it, the unix socket <status file>.sock takes requests, each answered "ok <generation>":
 *   "protect"  (guest paused) write-protect the chunks written since the last round again: a new
 *              dirty generation.
 *   "freeze"   (guest paused) a protect round, and from now on the first write to a chunk that was
 *              loaded copies the chunk's bytes as they are to the copy file <RAM file>.cow (same
 *              offset) and flags it, before the write goes through: a snapshot captured while the
 *              guest runs reads such chunks from the copy (copy-before-write).
 *   "thaw"     end copying; the copy file is emptied.
 * A store chunk file may be a 4 KiB page delta against a base chunk (format in
 * src/snapshot/chunk-delta.ts: a skippable frame 0x184D2A53 naming the base and the changed pages,
 * then those pages); the base is loaded (at most delta_depth files deep), the pages put in place,
 * and the result verified against the chunk's id like any other chunk.
 *
 * Map later (a standby QEMU, src/runtime/standby-qemu.ts): with TORPOR_LAZY_MEMORY_LATER=<RAM file>
 * instead of a map, the library registers that file's mapping when QEMU maps it (as above) but serves
 * no fault until the page map arrives: it listens on <RAM file>.pager.sock (bound at load, while QEMU
 * is root) for one line "map <uid>|-<TAB><page map path><TAB><layer path>\n". QEMU's -runas is held
 * back until then: its setgid/setgroups/setuid calls are recorded, not done, so the map, the store and
 * the template are opened as root exactly as with TORPOR_LAZY_MEMORY_MAP (same checks). Every
 * descriptor QEMU holds on the standby's layer disk (TORPOR_STANDBY_LAYER, opened at start) is
 * replaced by one of the machine's layer, opened the same way (dup3: same numbers, so QEMU's block
 * layer reads and writes the machine's file from then on). Then the process switches to the uid the
 * line names (its gid too) and answers "ok\n". The map's RAM file must be the very file QEMU mapped
 * (the supervisor renames it into place first). Anything else ends QEMU (exit 70).
 *
 * With -DTORPOR_LAZY_MEMORY_PROBE the file builds a small program instead that checks this kernel
 * lets the current user register a shared tmpfs mapping and serve a fault (userfaultfd may be off).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096ul

static void *real_mmap(void *address, size_t length, int protection, int flags, int fd, off_t offset) {
  return (void *)syscall(SYS_mmap, address, length, protection, flags, fd, offset);
}

/* Write-protect on shared memory must be asked for; a kernel without it refuses the request, then we go without. */
static int create_userfaultfd(uint64_t *features) {
  uint64_t wanted[2] = {UFFD_FEATURE_WP_HUGETLBFS_SHMEM, 0};
  for (int attempt = 0; attempt < 2; attempt++) {
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return -1;
    struct uffdio_api api = {.api = UFFD_API, .features = wanted[attempt]};
    if (ioctl(fd, UFFDIO_API, &api) == 0) {
      *features = api.features;
      return fd;
    }
    close(fd);
  }
  return -1;
}

/* Fills [address, address + length) of a registered range; EEXIST (already there) only wakes waiters. */
static int place_pages(int uffd, uintptr_t address, const uint8_t *data, size_t length, uint64_t mode) {
  struct uffdio_copy copy = {.dst = address, .src = (uintptr_t)data, .len = length, .mode = mode};
  while (ioctl(uffd, UFFDIO_COPY, &copy) != 0) {
    if (errno == EAGAIN && copy.copy > 0) {
      copy.dst += copy.copy, copy.src += copy.copy, copy.len -= copy.copy;
      continue;
    }
    if (errno != EEXIST) return -1;
    /* Some page in the run is present already: go page by page past it. */
    for (size_t done = copy.copy > 0 ? (size_t)copy.copy : 0; done < copy.len; done += PAGE) {
      struct uffdio_copy one = {.dst = copy.dst + done, .src = copy.src + done, .len = PAGE, .mode = mode};
      if (ioctl(uffd, UFFDIO_COPY, &one) != 0 && errno != EEXIST) return -1;
    }
    struct uffdio_range range = {.start = copy.dst, .len = copy.len};
    ioctl(uffd, UFFDIO_WAKE, &range);
    return 0;
  }
  return 0;
}

/*
 * 1: a zero page was placed; 0: the page was there already (its waiters are woken); -1: error.
 * Write-protected (dirty tracking) it must be a copy: UFFDIO_ZEROPAGE has no write-protect mode.
 */
__attribute__((unused)) static int place_zero_page(int uffd, uintptr_t address, uint64_t mode) {
  static const uint8_t zeros[PAGE];
  if (mode & UFFDIO_COPY_MODE_WP) {
    struct uffdio_copy copy = {.dst = address, .src = (uintptr_t)zeros, .len = PAGE, .mode = mode};
    if (ioctl(uffd, UFFDIO_COPY, &copy) == 0) return 1;
  } else {
    struct uffdio_zeropage zero = {.range = {.start = address, .len = PAGE}, .mode = 0};
    if (ioctl(uffd, UFFDIO_ZEROPAGE, &zero) == 0) return 1;
  }
  if (errno == EEXIST) {
    struct uffdio_range range = {.start = address, .len = PAGE};
    ioctl(uffd, UFFDIO_WAKE, &range);
    return 0;
  }
  if (mode & UFFDIO_COPY_MODE_WP) return -1;
  return place_pages(uffd, address, zeros, PAGE, 0) == 0 ? 1 : -1;
}

#ifdef TORPOR_LAZY_MEMORY_PROBE

static int probe_uffd;
static uint8_t *probe_area;

static void *probe_handler(void *unused) {
  (void)unused;
  static uint8_t page[PAGE];
  memset(page, 0x5a, sizeof page);
  struct pollfd wait = {.fd = probe_uffd, .events = POLLIN};
  if (poll(&wait, 1, 5000) != 1) return NULL;
  struct uffd_msg message;
  if (read(probe_uffd, &message, sizeof message) != sizeof message) return NULL;
  place_pages(probe_uffd, message.arg.pagefault.address & ~(PAGE - 1), page, PAGE, 0);
  return NULL;
}

int main(void) {
  uint64_t features = 0;
  probe_uffd = create_userfaultfd(&features);
  if (probe_uffd < 0) {
    printf("unavailable userfaultfd: %s\n", strerror(errno));
    return 0;
  }
  if (!(features & UFFD_FEATURE_MISSING_SHMEM)) {
    printf("unavailable the kernel cannot handle missing faults on shared memory\n");
    return 0;
  }
  int memory = memfd_create("torpor-probe", MFD_CLOEXEC);
  if (memory < 0 || ftruncate(memory, 16 * PAGE) != 0) {
    printf("unavailable memfd: %s\n", strerror(errno));
    return 0;
  }
  probe_area = real_mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, memory, 0);
  if (probe_area == MAP_FAILED) {
    printf("unavailable mmap: %s\n", strerror(errno));
    return 0;
  }
  struct uffdio_register registration = {.range = {.start = (uintptr_t)probe_area, .len = 16 * PAGE}, .mode = UFFDIO_REGISTER_MODE_MISSING};
  if (ioctl(probe_uffd, UFFDIO_REGISTER, &registration) != 0) {
    printf("unavailable register: %s\n", strerror(errno));
    return 0;
  }
  pthread_t thread;
  pthread_create(&thread, NULL, probe_handler, NULL);
  volatile uint8_t value = probe_area[3 * PAGE + 7];
  pthread_join(thread, NULL);
  if (value != 0x5a) {
    printf("unavailable a served fault read %u\n", value);
    return 0;
  }
  printf("available write-protect=%d\n", (features & UFFD_FEATURE_WP_HUGETLBFS_SHMEM) ? 1 : 0);
  return 0;
}

#else

#define XXH_INLINE_ALL
#include <xxhash.h>
#include <zstd.h>

enum { source_zero = 0, source_template = 1, source_store = 2 };
enum { state_waiting = 0, state_serving = 1, state_failed = 2 };
enum counter {
  counter_faults,          /* fault messages handled */
  counter_zero_pages,      /* faults answered with a zero page (zero chunk, or a zero page of a served chunk) */
  counter_template_chunks, /* chunks copied from the template's RAM */
  counter_store_chunks,    /* chunks decompressed from the store */
  counter_zero_chunks,     /* all-zero chunks touched */
  counter_template_mismatch, /* template chunks whose hash no longer matched (served from the store) */
  counter_copied_bytes,
  counter_template_ns,
  counter_store_ns,
  counter_prefetched_chunks,
  counter_served_order,    /* entries in the served-order list */
  counter_wait_ns,         /* summed time from reading a fault to answering it */
  counter_protect_generation, /* write-protect rounds done (one after each snapshot) */
  counter_write_faults,    /* first writes to a protected chunk since the last round */
  counter_tracking,        /* 1 when writes are tracked (registered write-protect) */
  counter_count = 16,
};

#define map_header_size 4160
#define record_size 48
#define path_size 1024
#define status_header_size 512

static struct {
  uint64_t memory_size;
  uint32_t chunk_size, chunk_count, prefetch_count;
  char memory_file[path_size], chunks_directory[path_size], template_file[path_size], status_file[path_size];
  uint8_t *records;
  uint32_t *prefetch;
  int chunks_fd, template_fd, uffd;
  /* per record: the store chunk file, opened while QEMU is still privileged (-1: open at fault time) */
  int *store_fds;
  uint8_t *status;
  size_t status_length;
  uintptr_t base;
  uint64_t base_offset, length;
  struct timespec started;
  size_t compressed_capacity;
  /* 1 once a thread took a chunk on; its status byte turns 1 only when all its pages are placed */
  uint8_t *claimed;
  int active, registered;
  uint64_t order_next;
  /* dirty tracking: pages are placed write-protected, a first write marks its chunk dirty */
  uint64_t copy_mode;
  uint8_t *dirty;
  int control_fd;
  /* copy-before-write while a snapshot is captured with the guest running */
  uint8_t *frozen, *copied;
  int freezing, memory_fd, copy_fd;
  uint8_t *copy_buffer;
  /* map later: waiting for the page map on waiting_fd; QEMU's uid switch held back until it came */
  int later, waiting_fd, held_setuid;
  /* map later: the standby's layer disk, whose descriptors are moved to the machine's layer */
  dev_t standby_layer_device;
  ino_t standby_layer_inode;
  int standby_layer_known;
} lazy;

#define delta_magic 0x184D2A53u
#define delta_depth 4

/* Base chunks of deltas, opened before QEMU drops privileges (see open_store_chunks). */
static struct {
  char (*ids)[32];
  int *fds;
  uint32_t count, capacity;
} bases;

/* One per serving thread (faults, prefetch): buffers and a zstd context are not shared. */
struct workspace {
  uint8_t *chunk, *compressed;
  /* per delta level: the changed pages of a delta being applied */
  uint8_t *pages[delta_depth];
  ZSTD_DCtx *decompressor;
};

/* (map later: nothing to count into before the map names the status file) */
static void count(enum counter counter, uint64_t amount) {
  if (lazy.status) __atomic_fetch_add((uint64_t *)(lazy.status + 16) + counter, amount, __ATOMIC_RELAXED);
}

static uint64_t now_ns(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
}

/* The machine must not run with memory we could not give it: say why and end QEMU. */
static void fail(const char *format, ...) {
  char message[368];
  va_list arguments;
  va_start(arguments, format);
  vsnprintf(message, sizeof message, format, arguments);
  va_end(arguments);
  if (lazy.status) {
    memcpy(lazy.status + 144, message, sizeof message);
    __atomic_store_n((uint32_t *)(lazy.status + 8), state_failed, __ATOMIC_RELEASE);
  }
  dprintf(2, "torpor lazy memory: %s\n", message);
  _exit(70);
}

static int read_fully(int fd, void *buffer, size_t length, off_t offset) {
  size_t done = 0;
  while (done < length) {
    ssize_t count = pread(fd, (uint8_t *)buffer + done, length - done, offset + (off_t)done);
    if (count < 0 && errno == EINTR) continue;
    if (count <= 0) return -1;
    done += (size_t)count;
  }
  return 0;
}

static int chunk_path(const uint8_t *hex, char id[33], char path[64]) {
  memcpy(id, hex, 32);
  id[32] = 0;
  for (int index = 0; index < 32; index++) {
    if (!((id[index] >= '0' && id[index] <= '9') || (id[index] >= 'a' && id[index] <= 'f'))) return -1;
  }
  snprintf(path, 64, "%.2s/%s.zst", id, id);
  return 0;
}

/*
 * Opens the store file of every chunk the map takes from the store, now, while QEMU may still run
 * as root: with -runas it later runs as an unprivileged uid that cannot open the store's files
 * (mode 0600 under `torpor serve`'s umask), and each machine's uid must not be able to read other
 * sessions' chunks either. Records sharing a chunk share its descriptor (an open-addressing table
 * keyed on the id's first 64 bits). A file that cannot be opened now is tried again at fault time,
 * where its error is reported.
 */
static void open_delta_bases(int fd);

static void open_store_chunks(void) {
  lazy.store_fds = malloc((size_t)lazy.chunk_count * sizeof(int));
  uint32_t table_size = 16;
  while (table_size < lazy.chunk_count * 2u) table_size <<= 1;
  uint32_t *table = malloc((size_t)table_size * sizeof(uint32_t)); /* record index + 1; 0 = empty */
  if (!lazy.store_fds || !table) fail("out of memory");
  memset(table, 0, (size_t)table_size * sizeof(uint32_t));
  for (uint32_t index = 0; index < lazy.chunk_count; index++) {
    lazy.store_fds[index] = -1;
    const uint8_t *record = lazy.records + (size_t)index * record_size;
    if (record[0] != source_store) continue;
    uint64_t key = 0;
    for (int digit = 0; digit < 16; digit++) key = key * 31 + record[16 + digit];
    uint32_t slot = (uint32_t)(key ^ (key >> 29)) & (table_size - 1);
    int shared = -1;
    while (table[slot] != 0) {
      uint32_t other = table[slot] - 1;
      if (memcmp(lazy.records + (size_t)other * record_size + 16, record + 16, 32) == 0) {
        shared = lazy.store_fds[other];
        break;
      }
      slot = (slot + 1) & (table_size - 1);
    }
    if (table[slot] != 0) {
      lazy.store_fds[index] = shared;
      continue;
    }
    table[slot] = index + 1;
    char id[33], path[64];
    if (chunk_path(record + 16, id, path) != 0) fail("page map holds an invalid chunk id");
    lazy.store_fds[index] = openat(lazy.chunks_fd, path, O_RDONLY | O_CLOEXEC);
    open_delta_bases(lazy.store_fds[index]);
  }
  free(table);
}

static int base_fd(const uint8_t *hex) {
  for (uint32_t index = 0; index < bases.count; index++) {
    if (memcmp(bases.ids[index], hex, 32) == 0) return bases.fds[index];
  }
  return -1;
}

/* The base id of a delta chunk file (its first bytes), or 0 when the file is a whole chunk. */
static int delta_base_of(int fd, uint8_t base[32]) {
  uint8_t head[48];
  if (read_fully(fd, head, sizeof head, 0) != 0) return 0;
  uint32_t magic;
  memcpy(&magic, head, 4);
  if (magic != delta_magic || memcmp(head + 8, "TORPDLT1", 8) != 0) return 0;
  memcpy(base, head + 16, 32);
  return 1;
}

/* Follows a delta's chain of bases, opening each base file once (they are shared by many deltas). */
static void open_delta_bases(int fd) {
  uint8_t base[32];
  for (int depth = 0; depth < delta_depth && fd >= 0 && delta_base_of(fd, base); depth++) {
    if (base_fd(base) >= 0) return;
    char id[33], path[64];
    if (chunk_path(base, id, path) != 0) return; /* reported when the delta is loaded */
    if (bases.count == bases.capacity) {
      bases.capacity = bases.capacity ? bases.capacity * 2 : 64;
      bases.ids = realloc(bases.ids, (size_t)bases.capacity * 32);
      bases.fds = realloc(bases.fds, (size_t)bases.capacity * sizeof(int));
      if (!bases.ids || !bases.fds) fail("out of memory");
    }
    fd = openat(lazy.chunks_fd, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return; /* tried again, and reported, at fault time */
    memcpy(bases.ids[bases.count], base, 32);
    bases.fds[bases.count++] = fd;
  }
}

static void load_map(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open the page map %s: %s", path, strerror(errno));
  struct stat status;
  fstat(fd, &status);
  uint8_t header[map_header_size];
  if (status.st_size < map_header_size || read_fully(fd, header, map_header_size, 0) != 0 || memcmp(header, "TORPMAP1", 8) != 0) {
    fail("%s is not a page map", path);
  }
  memcpy(&lazy.memory_size, header + 8, 8);
  memcpy(&lazy.chunk_size, header + 16, 4);
  memcpy(&lazy.chunk_count, header + 20, 4);
  memcpy(&lazy.prefetch_count, header + 24, 4);
  char *paths[4] = {lazy.memory_file, lazy.chunks_directory, lazy.template_file, lazy.status_file};
  for (int index = 0; index < 4; index++) {
    memcpy(paths[index], header + 64 + index * path_size, path_size);
    paths[index][path_size - 1] = 0;
  }
  if (lazy.chunk_size == 0 || lazy.chunk_size % PAGE != 0 || lazy.chunk_size > (64u << 20) ||
      (uint64_t)lazy.chunk_count * lazy.chunk_size < lazy.memory_size || lazy.prefetch_count > lazy.chunk_count) {
    fail("page map %s has an impossible layout", path);
  }
  size_t body = (size_t)lazy.chunk_count * record_size + (size_t)lazy.prefetch_count * 4;
  if ((size_t)status.st_size != map_header_size + body) fail("page map %s has the wrong size", path);
  lazy.records = malloc((size_t)lazy.chunk_count * record_size);
  lazy.prefetch = malloc((size_t)lazy.prefetch_count * 4 + 4);
  if (!lazy.records || !lazy.prefetch) fail("out of memory");
  if (read_fully(fd, lazy.records, (size_t)lazy.chunk_count * record_size, map_header_size) != 0 ||
      read_fully(fd, lazy.prefetch, (size_t)lazy.prefetch_count * 4, map_header_size + (off_t)lazy.chunk_count * record_size) != 0) {
    fail("cannot read the page map %s", path);
  }
  close(fd);
  for (uint32_t index = 0; index < lazy.prefetch_count; index++) {
    if (lazy.prefetch[index] >= lazy.chunk_count) fail("page map %s: prefetch entry out of range", path);
  }

  /* Everything is opened now, while QEMU may still be privileged (-runas drops it later). */
  lazy.chunks_fd = open(lazy.chunks_directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (lazy.chunks_fd < 0) fail("cannot open the chunk store %s: %s", lazy.chunks_directory, strerror(errno));
  lazy.template_fd = -1;
  if (lazy.template_file[0]) lazy.template_fd = open(lazy.template_file, O_RDONLY | O_CLOEXEC);
  int status_fd = open(lazy.status_file, O_RDWR | O_CLOEXEC);
  if (status_fd < 0) fail("cannot open the status file %s: %s", lazy.status_file, strerror(errno));
  lazy.status_length = status_header_size + ((lazy.chunk_count + 7) & ~7u) * 4 + (size_t)lazy.chunk_count * 8;
  struct stat status_stat;
  fstat(status_fd, &status_stat);
  if ((size_t)status_stat.st_size < lazy.status_length) fail("status file %s is too short", lazy.status_file);
  lazy.status = real_mmap(NULL, lazy.status_length, PROT_READ | PROT_WRITE, MAP_SHARED, status_fd, 0);
  close(status_fd);
  if (lazy.status == MAP_FAILED) {
    lazy.status = NULL;
    fail("cannot map the status file: %s", strerror(errno));
  }
  memcpy(lazy.status, "TORPSTA1", 8);
  memcpy(lazy.status + 12, &lazy.chunk_count, 4);
  lazy.dirty = lazy.status + status_header_size + ((lazy.chunk_count + 7) & ~7u) + (size_t)lazy.chunk_count * 8;
  lazy.frozen = lazy.dirty + ((lazy.chunk_count + 7) & ~7u);
  lazy.copied = lazy.frozen + ((lazy.chunk_count + 7) & ~7u);
  /* The copy file for copy-before-write (optional: without it "freeze" is refused). */
  char copy_path[path_size + 8];
  snprintf(copy_path, sizeof copy_path, "%s.cow", lazy.memory_file);
  lazy.copy_fd = open(copy_path, O_RDWR | O_CLOEXEC);
  lazy.memory_fd = -1;

  /* The supervisor asks for a write-protect round through this socket (bound now, before -runas). */
  lazy.control_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  struct sockaddr_un address = {.sun_family = AF_UNIX};
  if (snprintf(address.sun_path, sizeof address.sun_path, "%s.sock", lazy.status_file) >= (int)sizeof address.sun_path) fail("control socket path too long");
  unlink(address.sun_path);
  if (lazy.control_fd < 0 || bind(lazy.control_fd, (struct sockaddr *)&address, sizeof address) != 0 || listen(lazy.control_fd, 4) != 0) {
    fail("cannot open the control socket %s: %s", address.sun_path, strerror(errno));
  }

  lazy.compressed_capacity = ZSTD_compressBound(lazy.chunk_size) + 65536;
  lazy.claimed = calloc(lazy.chunk_count, 1);
  if (!lazy.claimed) fail("out of memory");
  open_store_chunks();
}

static void create_workspace(struct workspace *workspace) {
  workspace->chunk = malloc(lazy.chunk_size);
  workspace->compressed = malloc(lazy.compressed_capacity);
  workspace->decompressor = ZSTD_createDCtx();
  for (int depth = 0; depth < delta_depth; depth++) workspace->pages[depth] = NULL;
  if (!workspace->chunk || !workspace->compressed || !workspace->decompressor) fail("out of memory");
}

/* Chunk ids are XXH3-128 in hex, high 64 bits first (what the TypeScript side writes). */
static int matches_id(const uint8_t *data, size_t length, const uint8_t *hex) {
  XXH128_hash_t hash = XXH3_128bits(data, length);
  char text[33];
  snprintf(text, sizeof text, "%016llx%016llx", (unsigned long long)hash.high64, (unsigned long long)hash.low64);
  return memcmp(text, hex, 32) == 0;
}

/*
 * Reads the chunk `hex` into workspace->chunk (`length` bytes) and verifies it. `opened`: its file,
 * if already open (-1: look among the delta bases, then open it). A delta loads its base first
 * (depth + 1), then puts its changed pages in place; every level is checked against its own id.
 */
static void load_chunk(struct workspace *workspace, int opened, const uint8_t *hex, size_t length, int depth) {
  char id[33], path[64];
  if (chunk_path(hex, id, path) != 0) fail("page map holds an invalid chunk id");
  if (opened < 0) opened = base_fd(hex);
  int fd = opened >= 0 ? opened : openat(lazy.chunks_fd, path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("chunk %s is missing from the snapshot store (%s/%s): %s", id, lazy.chunks_directory, path, strerror(errno));
  struct stat status;
  fstat(fd, &status);
  if (status.st_size <= 0 || (size_t)status.st_size > lazy.compressed_capacity) fail("chunk %s has an impossible size (%lld bytes)", id, (long long)status.st_size);
  if (read_fully(fd, workspace->compressed, (size_t)status.st_size, 0) != 0) fail("cannot read chunk %s: %s", id, strerror(errno));
  if (fd != opened) close(fd);
  uint32_t magic;
  memcpy(&magic, workspace->compressed, 4);
  if (status.st_size >= 56 && magic == delta_magic) {
    /* A delta: its header names the base and which pages it holds. */
    const uint8_t *head = workspace->compressed;
    uint32_t payload, chunk_length, page_count;
    memcpy(&payload, head + 4, 4);
    memcpy(&chunk_length, head + 48, 4);
    memcpy(&page_count, head + 52, 4);
    size_t page_total = length / PAGE, bitmap_bytes = (page_total + 7) / 8;
    if (memcmp(head + 8, "TORPDLT1", 8) != 0 || chunk_length != length || length % PAGE != 0 || payload != 48 + bitmap_bytes ||
        (size_t)status.st_size < 8 + (size_t)payload || page_count > page_total) {
      fail("chunk %s is a malformed delta", id);
    }
    if (depth >= delta_depth) fail("chunk %s: its chain of deltas is longer than %d", id, delta_depth);
    uint8_t base[32], bitmap[(64u << 20) / PAGE / 8];
    memcpy(base, head + 16, 32);
    memcpy(bitmap, head + 56, bitmap_bytes);
    uint32_t counted = 0;
    for (size_t page = 0; page < page_total; page++) counted += (bitmap[page / 8] >> (page % 8)) & 1;
    if (counted != page_count) fail("chunk %s: delta page count does not match its bitmap", id);
    if (!workspace->pages[depth] && !(workspace->pages[depth] = malloc(lazy.chunk_size))) fail("out of memory");
    /* Both skippable frames (delta header, seek table) are skipped; the frames carry checksums. */
    size_t produced = ZSTD_decompressDCtx(workspace->decompressor, workspace->pages[depth], lazy.chunk_size, workspace->compressed, (size_t)status.st_size);
    if (ZSTD_isError(produced)) fail("chunk %s cannot be decoded: %s", id, ZSTD_getErrorName(produced));
    if (produced != (size_t)page_count * PAGE) fail("chunk %s holds %zu bytes of pages, expected %zu", id, produced, (size_t)page_count * PAGE);
    load_chunk(workspace, -1, base, length, depth + 1);
    for (size_t page = 0, position = 0; page < page_total; page++) {
      if ((bitmap[page / 8] >> (page % 8)) & 1) memcpy(workspace->chunk + page * PAGE, workspace->pages[depth] + (position++) * PAGE, PAGE);
    }
    if (!matches_id(workspace->chunk, length, hex)) fail("chunk %s does not match its hash", id);
    return;
  }
  /* Frames carry zstd content checksums (checked here); the seek table's skippable frame is skipped. */
  size_t produced = ZSTD_decompressDCtx(workspace->decompressor, workspace->chunk, length, workspace->compressed, (size_t)status.st_size);
  if (ZSTD_isError(produced)) fail("chunk %s cannot be decoded: %s", id, ZSTD_getErrorName(produced));
  if (produced != length) fail("chunk %s holds %zu bytes, expected %zu", id, produced, length);
  if (!matches_id(workspace->chunk, length, hex)) fail("chunk %s does not match its hash", id);
}

static void load_from_store(struct workspace *workspace, uint32_t chunk, const uint8_t *hex, size_t length) {
  load_chunk(workspace, lazy.store_fds ? lazy.store_fds[chunk] : -1, hex, length, 0);
}

static uint32_t elapsed_ms(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (uint32_t)((now.tv_sec - lazy.started.tv_sec) * 1000 + (now.tv_nsec - lazy.started.tv_nsec) / 1000000);
}

/*
 * Loads and places one chunk (all its non-zero pages); zero pages stay holes until touched. Two
 * threads serve chunks (faults, prefetch): the first to claim a chunk serves it; the other waits
 * for its status byte, which turns 1 only when every page is in place (a snapshot reads the flags
 * first, so it never takes a half-placed chunk from the file). Returns 0 if another thread had it.
 */
static int serve_chunk(struct workspace *workspace, uint32_t index) {
  uint8_t *served = lazy.status + status_header_size;
  if (__atomic_load_n(&served[index], __ATOMIC_ACQUIRE)) return 0;
  if (__atomic_exchange_n(&lazy.claimed[index], 1, __ATOMIC_ACQ_REL)) {
    while (!__atomic_load_n(&served[index], __ATOMIC_ACQUIRE)) {
      struct timespec pause = {.tv_sec = 0, .tv_nsec = 20000};
      nanosleep(&pause, NULL);
    }
    return 0;
  }
  const uint8_t *record = lazy.records + (size_t)index * record_size;
  uint64_t offset = (uint64_t)index * lazy.chunk_size;
  size_t length = lazy.chunk_size;
  if (offset + length > lazy.memory_size) length = (size_t)(lazy.memory_size - offset);
  uint64_t started = now_ns();
  int loaded = 0;
  if (record[0] == source_zero) {
    count(counter_zero_chunks, 1);
  } else {
    if (record[0] == source_template && lazy.template_fd >= 0 && read_fully(lazy.template_fd, workspace->chunk, length, (off_t)offset) == 0) {
      /* The template file lives outside the store: trust it only when it still hashes to the id. */
      if (matches_id(workspace->chunk, length, record + 16)) {
        loaded = 1;
        count(counter_template_chunks, 1);
      } else {
        count(counter_template_mismatch, 1);
      }
    }
    if (!loaded) {
      load_from_store(workspace, index, record + 16, length);
      count(counter_store_chunks, 1);
    }
    static const uint8_t zero_page[PAGE];
    for (size_t page = 0; page < length;) {
      while (page < length && memcmp(workspace->chunk + page, zero_page, PAGE) == 0) page += PAGE;
      size_t run = page;
      while (run < length && memcmp(workspace->chunk + run, zero_page, PAGE) != 0) run += PAGE;
      if (run > page) {
        uint64_t file = offset + page;
        /* Only the mapped part of the file can be placed (QEMU maps all of it in practice). */
        if (file >= lazy.base_offset && file + (run - page) <= lazy.base_offset + lazy.length) {
          if (place_pages(lazy.uffd, lazy.base + (file - lazy.base_offset), workspace->chunk + page, run - page, lazy.copy_mode) != 0) {
            fail("placing chunk %u into guest memory failed: %s", index, strerror(errno));
          }
          count(counter_copied_bytes, run - page);
        }
      }
      page = run;
    }
  }
  uint64_t spent = now_ns() - started;
  if (loaded) count(counter_template_ns, spent);
  else if (record[0] != source_zero) count(counter_store_ns, spent);
  __atomic_store_n(&served[index], 1, __ATOMIC_RELEASE);
  uint64_t position = __atomic_fetch_add(&lazy.order_next, 1, __ATOMIC_RELAXED);
  if (position < lazy.chunk_count) {
    uint32_t *order = (uint32_t *)(lazy.status + status_header_size + ((lazy.chunk_count + 7) & ~7u) + position * 8);
    order[0] = index;
    order[1] = elapsed_ms();
    count(counter_served_order, 1);
  }
  return 1;
}

/* A first write to a protected page: its chunk is dirty since the last round; let the guest write it all. */
static void serve_write(uintptr_t address) {
  uintptr_t page = address & ~(PAGE - 1);
  if (page < lazy.base || page >= lazy.base + lazy.length) fail("write fault outside guest memory at %#lx", (unsigned long)address);
  uint64_t file = lazy.base_offset + (page - lazy.base);
  uint32_t index = (uint32_t)(file / lazy.chunk_size);
  if (index >= lazy.chunk_count) fail("write fault past the end of the page map");
  __atomic_store_n(&lazy.dirty[index], 1, __ATOMIC_RELEASE);
  count(counter_write_faults, 1);
  uint64_t start = (uint64_t)index * lazy.chunk_size, end = start + lazy.chunk_size;
  if (start < lazy.base_offset) start = lazy.base_offset;
  if (end > lazy.base_offset + lazy.length) end = lazy.base_offset + lazy.length;
  if (__atomic_load_n(&lazy.freezing, __ATOMIC_ACQUIRE) && lazy.frozen[index] && !lazy.copied[index]) {
    /* Copy-before-write: the chunk as it was at the freeze, read through the file (not the mapping,
       whose missing pages would fault into this very thread; holes read as zeros, as a capture reads them). */
    size_t length = (size_t)(end - start);
    if (read_fully(lazy.memory_fd, lazy.copy_buffer, length, (off_t)start) != 0) fail("copy-before-write: reading chunk %u failed: %s", index, strerror(errno));
    for (size_t done = 0; done < length;) {
      ssize_t written = pwrite(lazy.copy_fd, lazy.copy_buffer + done, length - done, (off_t)(start + done));
      if (written < 0 && errno == EINTR) continue;
      if (written <= 0) fail("copy-before-write: writing chunk %u failed: %s", index, strerror(errno));
      done += (size_t)written;
    }
    __atomic_store_n(&lazy.copied[index], 1, __ATOMIC_RELEASE);
  }
  struct uffdio_writeprotect unprotect = {.range = {.start = lazy.base + (start - lazy.base_offset), .len = end - start}, .mode = 0};
  if (ioctl(lazy.uffd, UFFDIO_WRITEPROTECT, &unprotect) != 0) fail("write-unprotecting chunk %u failed: %s", index, strerror(errno));
}

/*
 * After a snapshot (guest paused): protect again and start a new dirty generation. Only chunks
 * written since the last round lost their protection (a chunk is unprotected only in serve_write,
 * which flags it dirty first; pages are placed protected), so only those are protected again: a
 * round over all 512 MiB took 16-90 ms, over the few written chunks well under a millisecond.
 */
static void protect_round(void) {
  for (uint32_t index = 0; index < lazy.chunk_count; index++) {
    if (!lazy.dirty[index]) continue;
    uint64_t start = (uint64_t)index * lazy.chunk_size, end = start + lazy.chunk_size;
    if (start < lazy.base_offset) start = lazy.base_offset;
    if (end > lazy.base_offset + lazy.length) end = lazy.base_offset + lazy.length;
    if (end <= start) continue;
    struct uffdio_writeprotect protect = {.range = {.start = lazy.base + (start - lazy.base_offset), .len = end - start}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    if (ioctl(lazy.uffd, UFFDIO_WRITEPROTECT, &protect) != 0) fail("write-protecting guest memory failed: %s", strerror(errno));
  }
  memset(lazy.dirty, 0, lazy.chunk_count);
  count(counter_protect_generation, 1);
}

/* Guest paused: every loaded chunk is frozen; its first write from now on copies it first. */
static void freeze(void) {
  uint8_t *served = lazy.status + status_header_size;
  memset(lazy.copied, 0, lazy.chunk_count);
  for (uint32_t index = 0; index < lazy.chunk_count; index++) lazy.frozen[index] = __atomic_load_n(&served[index], __ATOMIC_ACQUIRE);
  protect_round();
  __atomic_store_n(&lazy.freezing, 1, __ATOMIC_RELEASE);
}

static void thaw(void) {
  __atomic_store_n(&lazy.freezing, 0, __ATOMIC_RELEASE);
  memset(lazy.frozen, 0, lazy.chunk_count);
  struct stat copy;
  if (fstat(lazy.copy_fd, &copy) == 0 && copy.st_size > 0) fallocate(lazy.copy_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, copy.st_size);
}

static void serve_control(void) {
  int client = accept4(lazy.control_fd, NULL, NULL, SOCK_CLOEXEC);
  if (client < 0) return;
  char request[64] = {0};
  struct pollfd wait = {.fd = client, .events = POLLIN};
  ssize_t length = poll(&wait, 1, 1000) == 1 ? read(client, request, sizeof request - 1) : -1;
  char reply[64];
  const char *refused = !lazy.copy_mode ? "writes are not tracked" : length <= 0 ? "no request" : NULL;
  if (!refused && strncmp(request, "protect", 7) == 0) {
    protect_round();
  } else if (!refused && strncmp(request, "freeze", 6) == 0) {
    if (lazy.copy_fd < 0 || lazy.memory_fd < 0 || !lazy.copy_buffer) refused = "no copy file for copy-before-write";
    else freeze();
  } else if (!refused && strncmp(request, "thaw", 4) == 0) {
    if (lazy.copy_fd >= 0) thaw();
  } else if (!refused) {
    refused = "unknown request";
  }
  if (refused) snprintf(reply, sizeof reply, "error %s\n", refused);
  else snprintf(reply, sizeof reply, "ok %llu\n", (unsigned long long)__atomic_load_n((uint64_t *)(lazy.status + 16) + counter_protect_generation, __ATOMIC_RELAXED));
  if (write(client, reply, strlen(reply)) < 0) {
    /* the supervisor went away: it will treat the round as not done */
  }
  close(client);
}

static void serve_fault(struct workspace *workspace, uintptr_t address) {
  uint64_t started = now_ns();
  uintptr_t page = address & ~(PAGE - 1);
  if (page < lazy.base || page >= lazy.base + lazy.length) fail("fault outside guest memory at %#lx", (unsigned long)address);
  uint64_t file = lazy.base_offset + (page - lazy.base);
  uint32_t index = (uint32_t)(file / lazy.chunk_size);
  if (file >= lazy.memory_size || index >= lazy.chunk_count) fail("fault past the end of the page map at file offset %llu", (unsigned long long)file);
  count(counter_faults, 1);
  serve_chunk(workspace, index);
  /* Still missing after its chunk was served: a zero page of the chunk (or one the guest let go). */
  int placed = place_zero_page(lazy.uffd, page, lazy.copy_mode);
  if (placed < 0) fail("placing a zero page failed: %s", strerror(errno));
  if (placed > 0) count(counter_zero_pages, 1);
  count(counter_wait_ns, now_ns() - started);
}

static void receive_map(void);

static void *fault_handler(void *unused) {
  (void)unused;
  if (lazy.later) receive_map();
  struct workspace workspace;
  create_workspace(&workspace);
  struct uffd_msg messages[32];
  for (;;) {
    struct pollfd wait[2] = {{.fd = lazy.uffd, .events = POLLIN}, {.fd = lazy.control_fd, .events = POLLIN}};
    int ready = poll(wait, 2, -1);
    if (ready < 0) {
      if (errno == EINTR) continue;
      fail("poll: %s", strerror(errno));
    }
    if (wait[1].revents & POLLIN) serve_control();
    if (!(wait[0].revents & POLLIN)) continue;
    ssize_t length = read(lazy.uffd, messages, sizeof messages);
    if (length < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      fail("reading faults: %s", strerror(errno));
    }
    for (size_t index = 0; index < (size_t)length / sizeof messages[0]; index++) {
      if (messages[index].event != UFFD_EVENT_PAGEFAULT) continue;
      if (messages[index].arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) serve_write((uintptr_t)messages[index].arg.pagefault.address);
      else serve_fault(&workspace, (uintptr_t)messages[index].arg.pagefault.address);
    }
  }
  return NULL;
}

/* The working set a previous restore touched early, placed while the guest already runs. */
static void *prefetch_handler(void *unused) {
  (void)unused;
  struct workspace workspace;
  create_workspace(&workspace);
  for (uint32_t position = 0; position < lazy.prefetch_count; position++) {
    if (serve_chunk(&workspace, lazy.prefetch[position])) count(counter_prefetched_chunks, 1);
  }
  free(workspace.chunk);
  free(workspace.compressed);
  for (int depth = 0; depth < delta_depth; depth++) free(workspace.pages[depth]);
  ZSTD_freeDCtx(workspace.decompressor);
  return NULL;
}

static void start_thread(void *(*function)(void *), const char *name) {
  /* QEMU handles its process-wide signals in chosen threads; these take none. */
  sigset_t all, previous;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &previous);
  pthread_t thread;
  pthread_attr_t attributes;
  pthread_attr_init(&attributes);
  pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
  int error = pthread_create(&thread, &attributes, function, NULL);
  pthread_sigmask(SIG_SETMASK, &previous, NULL);
  if (error != 0) fail("cannot start the %s thread: %s", name, strerror(error));
  pthread_setname_np(thread, name);
}

static void take_over(void *address, size_t length, off_t offset, int fd) {
  /* QEMU keeps its fd of the RAM file; ours reads chunks for copy-before-write. */
  lazy.memory_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (!lazy.later) lazy.copy_buffer = malloc(lazy.chunk_size);
  uint64_t features = 0;
  lazy.uffd = create_userfaultfd(&features);
  if (lazy.uffd < 0) fail("userfaultfd is not available: %s", strerror(errno));
  if (!(features & UFFD_FEATURE_MISSING_SHMEM)) fail("this kernel cannot serve missing faults on shared memory");
  lazy.base = (uintptr_t)address;
  lazy.length = length;
  lazy.base_offset = (uint64_t)offset;
  /* Writes are tracked where the kernel can write-protect shared memory; else snapshots hash every loaded chunk. */
  struct uffdio_register registration = {.range = {.start = lazy.base, .len = length}, .mode = UFFDIO_REGISTER_MODE_MISSING};
  if ((features & UFFD_FEATURE_WP_HUGETLBFS_SHMEM) && !(getenv("TORPOR_TRACK_WRITES") && strcmp(getenv("TORPOR_TRACK_WRITES"), "0") == 0)) {
    registration.mode |= UFFDIO_REGISTER_MODE_WP;
    /* Protect the whole range once: pages already in the file (a warm RAM file) are then tracked
       too; the kernel marks even not yet mapped pages of shared memory. */
    struct uffdio_writeprotect protect = {.range = {.start = lazy.base, .len = length}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    if (ioctl(lazy.uffd, UFFDIO_REGISTER, &registration) == 0) {
      if (ioctl(lazy.uffd, UFFDIO_WRITEPROTECT, &protect) != 0) fail("write-protecting guest memory failed: %s", strerror(errno));
      lazy.copy_mode = UFFDIO_COPY_MODE_WP;
      count(counter_tracking, 1);
    } else {
      registration.mode = UFFDIO_REGISTER_MODE_MISSING;
    }
  }
  if (!lazy.copy_mode && ioctl(lazy.uffd, UFFDIO_REGISTER, &registration) != 0) fail("registering guest memory with userfaultfd failed: %s", strerror(errno));
  clock_gettime(CLOCK_MONOTONIC, &lazy.started);
  lazy.registered = 1;
  /* Map later: the fault thread waits for the map first (see receive_map); nothing runs the guest before. */
  start_thread(fault_handler, "torpor-faults");
  if (lazy.later) return;
  if (lazy.prefetch_count > 0) start_thread(prefetch_handler, "torpor-prefetch");
  __atomic_store_n((uint32_t *)(lazy.status + 8), state_serving, __ATOMIC_RELEASE);
}

/*
 * QEMU dies with its supervisor: the supervisor starts it with a parent-death signal (setpriv
 * --pdeathsig), but the kernel clears that signal when a process changes its user id (prctl(2)),
 * which QEMU does with -runas. With TORPOR_PARENT_DEATH=1 this library arms it again right after
 * QEMU's setuid succeeds, and ends QEMU if the supervisor already died in between.
 */
static pid_t supervisor_pid;
static int keep_parent_death;

static void rearm_parent_death(void) {
  if (!keep_parent_death) return;
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != supervisor_pid) _exit(70);
}

int setuid(uid_t uid) {
  if (lazy.later && !lazy.status) {
    /* Held back until the map (QEMU then checks that setuid(0) fails: it does, as it would after a real switch). */
    if (lazy.held_setuid && uid == 0) {
      errno = EPERM;
      return -1;
    }
    lazy.held_setuid = 1;
    return 0;
  }
  static int (*real_setuid)(uid_t);
  if (!real_setuid) real_setuid = (int (*)(uid_t))dlsym(RTLD_NEXT, "setuid");
  int result = real_setuid(uid);
  if (result == 0) rearm_parent_death();
  return result;
}

int setgid(gid_t gid) {
  if (lazy.later && !lazy.status) return 0;
  static int (*real_setgid)(gid_t);
  if (!real_setgid) real_setgid = (int (*)(gid_t))dlsym(RTLD_NEXT, "setgid");
  return real_setgid(gid);
}

int setgroups(size_t size, const gid_t *list) {
  if (lazy.later && !lazy.status) return 0;
  static int (*real_setgroups)(size_t, const gid_t *);
  if (!real_setgroups) real_setgroups = (int (*)(size_t, const gid_t *))dlsym(RTLD_NEXT, "setgroups");
  return real_setgroups(size, list);
}

/*
 * Map later: QEMU opened the standby's layer disk (by path, or as the fd set -runas passes); each of
 * its descriptors on that file is replaced, under the same number and with the same access mode
 * and flags, by a descriptor of the machine's layer. Nothing reads or writes the disk meanwhile:
 * the guest has not run, and an incoming migration keeps the block layer inactive until it ends.
 */
static void move_layer(const char *layer) {
  struct stat machine_layer;
  if (stat(layer, &machine_layer) != 0 || !S_ISREG(machine_layer.st_mode)) fail("cannot use the machine's layer disk %s: %s", layer, strerror(errno ? errno : EINVAL));
  /* The open descriptors, from /proc (a few dozen; the table itself is reserved 8192 wide, above):
   * not an fstat of every possible number. Listed first, then changed. */
  static int open_fds[8192];
  int listed = 0;
  DIR *directory = opendir("/proc/self/fd");
  if (directory) {
    struct dirent *entry;
    while ((entry = readdir(directory)) && listed < (int)(sizeof open_fds / sizeof open_fds[0])) {
      if (entry->d_name[0] >= '0' && entry->d_name[0] <= '9') open_fds[listed++] = atoi(entry->d_name);
    }
    closedir(directory);
  } else {
    for (int fd = 0; fd < 4096; fd++) open_fds[listed++] = fd;
  }
  int moved = 0;
  for (int position = 0; position < listed; position++) {
    int fd = open_fds[position];
    struct stat held;
    if (fd == lazy.memory_fd || fstat(fd, &held) != 0) continue;
    if (held.st_dev != lazy.standby_layer_device || held.st_ino != lazy.standby_layer_inode) continue;
    int flags = fcntl(fd, F_GETFL), descriptor_flags = fcntl(fd, F_GETFD);
    if (flags < 0 || descriptor_flags < 0) fail("cannot read the flags of the layer descriptor %d: %s", fd, strerror(errno));
    int replacement = open(layer, (flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY)) | O_CLOEXEC);
    if (replacement < 0) fail("cannot open the machine's layer disk %s: %s", layer, strerror(errno));
    struct stat opened;
    if (fstat(replacement, &opened) != 0 || opened.st_dev != machine_layer.st_dev || opened.st_ino != machine_layer.st_ino || opened.st_size != held.st_size) {
      fail("the machine's layer disk %s changed, or differs in size from the standby's", layer);
    }
    if (dup3(replacement, fd, (descriptor_flags & FD_CLOEXEC) ? O_CLOEXEC : 0) != fd) fail("cannot move the layer descriptor %d: %s", fd, strerror(errno));
    close(replacement);
    moved++;
  }
  if (moved == 0) fail("QEMU holds no descriptor of the standby's layer disk");
}

/*
 * Map later: one connection on the waiting socket brings "map <path> <uid>|-". The map is loaded as
 * it would be at start (same checks), the RAM file it names must be the mapped one, then the uid
 * switch QEMU asked for is done with the uid named here (the machine's own; "-" only for a QEMU
 * that asked for none). Any error ends QEMU: a standby is cheap to replace, a wrong map is not.
 */
static void receive_map(void) {
  int client;
  for (;;) {
    client = accept4(lazy.waiting_fd, NULL, NULL, SOCK_CLOEXEC);
    if (client >= 0) break;
    if (errno != EINTR) fail("waiting for the page map: %s", strerror(errno));
  }
  char request[path_size + 64];
  size_t used = 0;
  while (used < sizeof request - 1 && (used == 0 || request[used - 1] != '\n')) {
    ssize_t got = read(client, request + used, sizeof request - 1 - used);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    used += (size_t)got;
  }
  request[used] = 0;
  /* "map <uid>|-\t<page map>\t<layer>\n": paths may hold spaces, never tabs (the supervisor checks). */
  char path[path_size], layer[path_size], owner[16];
  char *end = memchr(request, '\n', used);
  if (!end || memchr(request, 0, used) || strncmp(request, "map ", 4) != 0) fail("the page map request is malformed");
  *end = 0;
  char *first_tab = strchr(request + 4, '\t');
  char *second_tab = first_tab ? strchr(first_tab + 1, '\t') : NULL;
  if (!first_tab || !second_tab || strchr(second_tab + 1, '\t')) fail("the page map request is malformed");
  size_t owner_length = (size_t)(first_tab - (request + 4)), path_length = (size_t)(second_tab - (first_tab + 1)), layer_length = strlen(second_tab + 1);
  if (owner_length == 0 || owner_length >= sizeof owner || path_length >= sizeof path || layer_length >= sizeof layer) fail("the page map request is malformed");
  memcpy(owner, request + 4, owner_length);
  owner[owner_length] = 0;
  memcpy(path, first_tab + 1, path_length);
  path[path_length] = 0;
  memcpy(layer, second_tab + 1, layer_length);
  layer[layer_length] = 0;
  if (path[0] != '/' || (layer[0] && layer[0] != '/')) fail("the page map request names a relative path");
  if (!layer[0] != !lazy.standby_layer_known) fail("the page map request and the standby disagree on a layer disk");
  long uid = -1;
  if (strcmp(owner, "-") != 0) {
    char *digits_end;
    errno = 0;
    uid = strtol(owner, &digits_end, 10);
    if (errno || *digits_end || digits_end == owner || uid <= 0 || uid > 0x7fffffff) fail("the page map request names an invalid uid");
  }
  if ((uid < 0) != !lazy.held_setuid) fail(lazy.held_setuid ? "QEMU was started to drop root, but the page map request names no uid" : "the page map request names a uid for a QEMU that keeps its own");
  char slot_socket[path_size + 16];
  snprintf(slot_socket, sizeof slot_socket, "%s.pager.sock", lazy.memory_file);
  struct stat mapped;
  if (fstat(lazy.memory_fd, &mapped) != 0) fail("cannot stat the mapped RAM file: %s", strerror(errno));
  load_map(path);
  struct stat named;
  if (stat(lazy.memory_file, &named) != 0 || named.st_dev != mapped.st_dev || named.st_ino != mapped.st_ino) fail("the page map names another RAM file than the one QEMU mapped");
  if ((uint64_t)lazy.base_offset + lazy.length > lazy.memory_size) fail("the page map is smaller than the guest memory QEMU mapped");
  if (layer[0]) move_layer(layer);
  /* The standby's socket is done with (unlinked while still root: it lives in a root-only directory). */
  unlink(slot_socket);
  close(lazy.waiting_fd);
  if (uid > 0) {
    gid_t group = (gid_t)uid;
    if (setgroups(1, &group) != 0 || setgid(group) != 0 || setuid((uid_t)uid) != 0) fail("dropping root for the machine failed: %s", strerror(errno));
    if (getuid() != (uid_t)uid || geteuid() != (uid_t)uid || getegid() != group || setuid(0) != -1) fail("dropping root for the machine did not hold");
  }
  lazy.copy_buffer = malloc(lazy.chunk_size);
  if (!lazy.copy_buffer) fail("out of memory");
  if (lazy.copy_mode) count(counter_tracking, 1);
  clock_gettime(CLOCK_MONOTONIC, &lazy.started);
  if (lazy.prefetch_count > 0) start_thread(prefetch_handler, "torpor-prefetch");
  __atomic_store_n((uint32_t *)(lazy.status + 8), state_serving, __ATOMIC_RELEASE);
  if (write(client, "ok\n", 3) != 3) {
    /* the supervisor went away: QEMU dies with it (parent death) */
  }
  close(client);
}

/*
 * Map later: the map's chunk files are opened (hundreds of descriptors) when it arrives, in a QEMU
 * that runs several threads by then. Growing the descriptor table of a process whose threads share
 * it waits for an RCU grace period (the kernel's expand_fdtable): 10-30 ms on this busy 2-core host,
 * on the restore's critical path (measured: the chunk opens took 10-30 ms for 1.5 ms of CPU and one
 * blocking wait). Grown here instead, in the constructor, while QEMU is one thread (no wait), to
 * what the process may open (at most 8192); the table never shrinks. 64 KiB of pointers.
 */
static void reserve_descriptor_table(void) {
  struct rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur < 64) return;
  int highest = limit.rlim_cur > 8192 ? 8191 : (int)limit.rlim_cur - 1;
  /* Open already (passed by a wrapper): the table is that large, and that descriptor is not ours to replace. */
  if (fcntl(highest, F_GETFD) >= 0) return;
  int probe = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (probe < 0) return;
  if (dup3(probe, highest, O_CLOEXEC) == highest) close(highest);
  close(probe);
}

__attribute__((constructor)) static void initialize(void) {
  const char *map = getenv("TORPOR_LAZY_MEMORY_MAP");
  const char *later = getenv("TORPOR_LAZY_MEMORY_LATER");
  const char *parent_death = getenv("TORPOR_PARENT_DEATH");
  if ((!map || !*map) && (!later || !*later) && !parent_death) return;
  /* A wrapper around QEMU (TORPOR_QEMU=script, setpriv) passes the library on untouched; QEMU takes it. */
  char executable[4096];
  ssize_t length = readlink("/proc/self/exe", executable, sizeof executable - 1);
  if (length <= 0) return;
  executable[length] = 0;
  const char *name = strrchr(executable, '/');
  if (strncmp(name ? name + 1 : executable, "qemu-system-", 12) != 0) return;
  /* Only QEMU itself: anything it might start must not inherit the library. */
  unsetenv("LD_PRELOAD");
  if (parent_death && strcmp(parent_death, "1") == 0) {
    keep_parent_death = 1;
    supervisor_pid = getppid();
  }
  unsetenv("TORPOR_PARENT_DEATH");
  if (later && *later) {
    if (strlen(later) >= sizeof lazy.memory_file) fail("the standby RAM file path is too long");
    snprintf(lazy.memory_file, sizeof lazy.memory_file, "%s", later);
    unsetenv("TORPOR_LAZY_MEMORY_LATER");
    lazy.waiting_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (snprintf(address.sun_path, sizeof address.sun_path, "%s.pager.sock", lazy.memory_file) >= (int)sizeof address.sun_path) fail("standby socket path too long");
    unlink(address.sun_path);
    if (lazy.waiting_fd < 0 || bind(lazy.waiting_fd, (struct sockaddr *)&address, sizeof address) != 0 || listen(lazy.waiting_fd, 1) != 0) {
      fail("cannot open the standby socket %s: %s", address.sun_path, strerror(errno));
    }
    const char *standby_layer = getenv("TORPOR_STANDBY_LAYER");
    if (standby_layer && *standby_layer) {
      struct stat layer;
      if (stat(standby_layer, &layer) != 0) fail("cannot find the standby's layer disk %s: %s", standby_layer, strerror(errno));
      lazy.standby_layer_device = layer.st_dev;
      lazy.standby_layer_inode = layer.st_ino;
      lazy.standby_layer_known = 1;
    }
    unsetenv("TORPOR_STANDBY_LAYER");
    reserve_descriptor_table();
    lazy.later = 1;
    lazy.active = 1;
    return;
  }
  if (!map || !*map) return;
  char path[path_size];
  snprintf(path, sizeof path, "%s", map);
  unsetenv("TORPOR_LAZY_MEMORY_MAP");
  load_map(path);
  lazy.active = 1;
}

static int is_guest_memory(int fd) {
  struct stat mapped, expected;
  if (fstat(fd, &mapped) != 0 || stat(lazy.memory_file, &expected) != 0) return 0;
  return mapped.st_dev == expected.st_dev && mapped.st_ino == expected.st_ino;
}

void *mmap(void *address, size_t length, int protection, int flags, int fd, off_t offset) {
  void *result = real_mmap(address, length, protection, flags, fd, offset);
  if (result != MAP_FAILED && lazy.active && !lazy.registered && fd >= 0 && (flags & MAP_SHARED) && is_guest_memory(fd)) {
    take_over(result, length, offset, fd);
  }
  return result;
}

void *mmap64(void *address, size_t length, int protection, int flags, int fd, off_t offset) {
  return mmap(address, length, protection, flags, fd, offset);
}

#endif
