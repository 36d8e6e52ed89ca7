// torpor guest agent: PID 1 of every torpor microVM.
//
// It loads the virtio modules carried in the initramfs, mounts the image (read-only: a virtio disk, or shared memory with DAX)
// under a per-machine writable layer (/dev/vdb) with overlayfs, moves into it, and then serves
// the host over a virtio-serial port named "torpor.agent": exec with streamed stdio and exit
// codes, signals, TTY resize, file copy, health. The wire format is defined in
// src/guest/protocol.ts; keep the two in step and bump PROTOCOL_VERSION on any change.
//
// Built statically with musl-gcc so it needs nothing from the image it serves.

#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
// musl-gcc has no kernel headers: the ioctl numbers of RNDADDENTROPY, _IOW('R', 0x03, int[2]),
// and RNDRESEEDCRNG, _IO('R', 0x07).
#define RNDADDENTROPY 0x40085203
#define RNDRESEEDCRNG 0x5207

#define PROTOCOL_VERSION 1
#define FRAME_MAGIC 0x31525054u
#define HEADER_SIZE 16
#define MAX_PAYLOAD (1u << 20)
#define MAX_SESSIONS 256
#define READ_CHUNK 65536

enum {
  T_HELLO = 1, T_PING = 2, T_PONG = 3, T_CONFIGURE = 4, T_OK = 5, T_ERROR = 6, T_RESUMED = 7, T_SHUTDOWN = 8,
  T_EXEC = 10, T_STARTED = 11, T_STDIN = 12, T_STDOUT = 13, T_STDERR = 14, T_EXIT = 15, T_SIGNAL = 16, T_RESIZE = 17,
  T_FILE_WRITE = 20, T_FILE_DATA = 21, T_FILE_READ = 22, T_FILE_STAT = 23, T_MKDIR = 24, T_LIST = 25, T_DIRENT = 26,
};

enum { EXEC_TTY = 1, EXEC_STDIN = 2 };

// Tags stored in epoll data so one loop serves the channel, signals and every child pipe.
enum { TAG_CHANNEL = 1, TAG_SIGNAL = 2, TAG_OUT = 3, TAG_ERR = 4, TAG_IN = 5 };

struct pending_input {
  char *data;
  size_t length;
  size_t offset;
  int close_after;
};

struct session {
  int used;
  uint32_t stream;
  pid_t pid;
  int out_fd, err_fd, in_fd;  // in_fd == out_fd for a tty (the master)
  int tty;
  int exited;
  int status;
  struct pending_input input;
  // file write in progress on this stream
  int file_fd;
};

static struct session sessions[MAX_SESSIONS];
static int channel_fd = -1;
static int epoll_fd = -1;

static void log_line(const char *format, ...) {
  va_list args;
  va_start(args, format);
  fprintf(stderr, "torpor-agent: ");
  vfprintf(stderr, format, args);
  fprintf(stderr, "\n");
  va_end(args);
}

// ---------- framing ----------

static void write_all(int fd, const void *buffer, size_t length) {
  const char *cursor = buffer;
  while (length > 0) {
    ssize_t written = write(fd, cursor, length);
    if (written < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        struct timespec pause = {0, 1000000};
        nanosleep(&pause, NULL);
        continue;
      }
      return;  // the host went away; it will reconnect and say hello
    }
    cursor += written;
    length -= (size_t)written;
  }
}

static void send_frame(uint8_t type, uint32_t stream, const void *payload, uint32_t length) {
  unsigned char header[HEADER_SIZE] = {0};
  uint32_t magic = FRAME_MAGIC;
  memcpy(header, &magic, 4);
  header[4] = type;
  memcpy(header + 8, &stream, 4);
  memcpy(header + 12, &length, 4);
  // One write for small frames keeps them atomic on the port.
  if (length <= 4096) {
    unsigned char joined[HEADER_SIZE + 4096];
    memcpy(joined, header, HEADER_SIZE);
    if (length) memcpy(joined + HEADER_SIZE, payload, length);
    write_all(channel_fd, joined, HEADER_SIZE + length);
  } else {
    write_all(channel_fd, header, HEADER_SIZE);
    write_all(channel_fd, payload, length);
  }
}

static void send_error(uint32_t stream, int error_number, const char *format, ...) {
  char buffer[1024];
  int32_t code = error_number;
  memcpy(buffer, &code, 4);
  va_list args;
  va_start(args, format);
  int n = vsnprintf(buffer + 4, sizeof buffer - 4, format, args);
  va_end(args);
  if (n < 0) n = 0;
  if (n > (int)sizeof buffer - 5) n = sizeof buffer - 5;
  send_frame(T_ERROR, stream, buffer, 4 + (uint32_t)n);
}

// ---------- boot ----------

static void mkdir_p(const char *path, mode_t mode) {
  char buffer[PATH_MAX];
  snprintf(buffer, sizeof buffer, "%s", path);
  for (char *p = buffer + 1; *p; p++) {
    if (*p == '/') {
      *p = 0;
      mkdir(buffer, mode);
      *p = '/';
    }
  }
  mkdir(buffer, mode);
}

static void load_modules(const char *list) {
  // The list names module files in dependency order (written by the initramfs builder).
  FILE *order = fopen(list, "r");
  if (!order) return;
  char line[PATH_MAX];
  while (fgets(line, sizeof line, order)) {
    line[strcspn(line, "\n")] = 0;
    if (!line[0]) continue;
    int fd = open(line, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { log_line("module %s: %s", line, strerror(errno)); continue; }
    if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST)
      log_line("load %s: %s", line, strerror(errno));
    close(fd);
  }
  fclose(order);
}

static int wait_for_path(const char *path, int milliseconds) {
  for (int waited = 0; waited < milliseconds; waited += 5) {
    if (access(path, F_OK) == 0) return 0;
    struct timespec pause = {0, 5000000};
    nanosleep(&pause, NULL);
  }
  return access(path, F_OK);
}

static void write_text(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  write_all(fd, text, strlen(text));
  close(fd);
}

// Disks are named by the serial the host gave them, not by probe order.
static int find_disk(const char *serial, char *device, size_t size, int milliseconds) {
  for (int waited = 0; waited <= milliseconds; waited += 5) {
    DIR *blocks = opendir("/sys/block");
    struct dirent *entry;
    while (blocks && (entry = readdir(blocks))) {
      if (strncmp(entry->d_name, "vd", 2) != 0) continue;
      char path[PATH_MAX], value[64] = {0};
      snprintf(path, sizeof path, "/sys/block/%s/serial", entry->d_name);
      int fd = open(path, O_RDONLY | O_CLOEXEC);
      if (fd < 0) continue;
      ssize_t n = read(fd, value, sizeof value - 1);
      close(fd);
      if (n > 0 && strncmp(value, serial, strlen(serial)) == 0) {
        snprintf(device, size, "/dev/%s", entry->d_name);
        closedir(blocks);
        return wait_for_path(device, 2000);
      }
    }
    if (blocks) closedir(blocks);
    struct timespec pause = {0, 5000000};
    nanosleep(&pause, NULL);
  }
  return -1;
}

// The host gives the image as shared read-only memory (virtio-pmem) instead of a disk when the
// kernel command line says torpor.image=pmem (a q35 machine; see src/vm/image-memory.ts).
static int image_is_memory(void) {
  char line[4096] = {0};
  int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, line, sizeof line - 1);
  close(fd);
  if (n <= 0) return 0;
  for (char *word = strtok(line, " \n"); word; word = strtok(NULL, " \n"))
    if (strcmp(word, "torpor.image=pmem") == 0) return 1;
  return 0;
}

static int mount_image(void) {
  char image[64];
  if (image_is_memory()) {
    if (wait_for_path("/dev/pmem0", 10000) != 0) { log_line("no image memory (/dev/pmem0)"); return -1; }
    // dax: files are read straight from the shared region, never copied into this guest's page
    // cache (so never into its RAM or its snapshots). Without DAX support the same device still
    // mounts, with a page cache of its own: slower to snapshot, not wrong.
    int mounted = mount("/dev/pmem0", "/lower", "ext4", MS_RDONLY, "noload,dax");
    if (mounted != 0) {
      log_line("mount image with dax: %s; mounting without", strerror(errno));
      mounted = mount("/dev/pmem0", "/lower", "ext4", MS_RDONLY, "noload");
    }
    if (mounted != 0) { log_line("mount image: %s", strerror(errno)); return -1; }
    // The host maps the region read-only and drops writes to it; marking the device read-only here
    // too makes a write fail with an error instead of landing in this guest's own cache of the
    // device, where ext4 would then read back metadata the image does not have.
    int device = open("/dev/pmem0", O_RDONLY | O_CLOEXEC);
    int readonly = 1;
    if (device >= 0) { ioctl(device, BLKROSET, &readonly); close(device); }
    return 0;
  }
  if (find_disk("torpor-image", image, sizeof image, 10000) != 0) { log_line("no image disk (serial torpor-image)"); return -1; }
  if (mount(image, "/lower", "ext4", MS_RDONLY, "noload") != 0) { log_line("mount image: %s", strerror(errno)); return -1; }
  return 0;
}

static int mount_root(void) {
  char layer[64];
  mkdir_p("/lower", 0755);
  mkdir_p("/upper", 0755);
  mkdir_p("/newroot", 0755);
  if (mount_image() != 0) return -1;
  if (find_disk("torpor-layer", layer, sizeof layer, 500) == 0) {
    // noinit_itable: the host made the layer with lazy init on a sparse file; zeroing inode tables
    // in the guest would only dirty blocks that every snapshot then has to carry.
    if (mount(layer, "/upper", "ext4", 0, "noinit_itable,discard") != 0) { log_line("mount layer: %s", strerror(errno)); return -1; }
    mkdir_p("/upper/upper", 0755);
    mkdir_p("/upper/work", 0755);
    if (mount("overlay", "/newroot", "overlay", 0, "lowerdir=/lower,upperdir=/upper/upper,workdir=/upper/work") != 0) {
      log_line("mount overlay: %s", strerror(errno));
      return -1;
    }
  } else {
    // No writable layer: the image is all there is (read-only machines).
    if (mount("/lower", "/newroot", NULL, MS_BIND, NULL) != 0) return -1;
  }
  if (chdir("/newroot") != 0) return -1;
  if (mount("/newroot", "/", NULL, MS_MOVE, NULL) != 0) { log_line("move root: %s", strerror(errno)); return -1; }
  if (chroot(".") != 0 || chdir("/") != 0) return -1;
  mkdir_p("/dev", 0755);
  mkdir_p("/proc", 0555);
  mkdir_p("/sys", 0555);
  mkdir_p("/tmp", 01777);
  mkdir_p("/etc", 0755);
  mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
  mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  mkdir_p("/dev/pts", 0755);
  mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620");
  unlink("/dev/ptmx");
  symlink("pts/ptmx", "/dev/ptmx");
  mkdir_p("/dev/shm", 01777);
  mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
  symlink("/proc/self/fd", "/dev/fd");
  symlink("/proc/self/fd/0", "/dev/stdin");
  symlink("/proc/self/fd/1", "/dev/stdout");
  symlink("/proc/self/fd/2", "/dev/stderr");
  return 0;
}

static int interface_up(int fd, const char *name, const char *address, const char *netmask) {
  struct ifreq request;
  memset(&request, 0, sizeof request);
  snprintf(request.ifr_name, IFNAMSIZ, "%s", name);
  if (address) {
    struct sockaddr_in *socket_address = (struct sockaddr_in *)&request.ifr_addr;
    socket_address->sin_family = AF_INET;
    inet_pton(AF_INET, address, &socket_address->sin_addr);
    if (ioctl(fd, SIOCSIFADDR, &request) != 0) return -1;
    inet_pton(AF_INET, netmask, &socket_address->sin_addr);
    if (ioctl(fd, SIOCSIFNETMASK, &request) != 0) return -1;
  }
  if (ioctl(fd, SIOCGIFFLAGS, &request) != 0) return -1;
  request.ifr_flags |= IFF_UP | IFF_RUNNING;
  return ioctl(fd, SIOCSIFFLAGS, &request);
}

// The files the host's settings write (/etc/hostname, /etc/hosts, /etc/resolv.conf) live on a small
// tmpfs bind-mounted over their paths, as container runtimes do. A restore under a new name (a
// fork's child, a restore of a snapshot under another name) rewrites them while the host waits for
// the answer; on the overlay's ext4 that write (truncate, block allocation, journal, writeback) was
// ~2,700 blocks of kernel code for TCG to translate anew after every such restore
// (bench/translated-blocks.ts, architecture/runtime.md).
// Each starts as the image's own file. A path that cannot be bound (a read-only root without the
// file) keeps the old way: the write goes to the path itself.
// The agent keeps a descriptor of each bound file (a restored agent still holds them): a rename
// rewrites the file in place (pwrite, then a truncate only when the new text is shorter), with no
// path walk, open, O_TRUNC page removal and re-allocation, close or RCU-freed file on the way:
// ~1,000 fewer blocks for TCG to translate between a restore's hello and a client's first frame.
enum { RUNTIME_HOSTNAME, RUNTIME_HOSTS, RUNTIME_RESOLV, RUNTIME_FILES };
static const char *const runtime_names[RUNTIME_FILES] = {"hostname", "hosts", "resolv.conf"};
static int runtime_fds[RUNTIME_FILES] = {-1, -1, -1};

static void bind_runtime_files(void) {
  mkdir_p("/run/torpor", 0755);
  if (mount("torpor-runtime", "/run/torpor", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=256k,mode=0755") != 0) {
    log_line("runtime files: %s", strerror(errno));
    return;
  }
  for (size_t i = 0; i < RUNTIME_FILES; i++) {
    char image_path[64], runtime_path[64];
    snprintf(image_path, sizeof image_path, "/etc/%s", runtime_names[i]);
    snprintf(runtime_path, sizeof runtime_path, "/run/torpor/%s", runtime_names[i]);
    int target = open(runtime_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (target < 0) continue;
    int source = open(image_path, O_RDONLY | O_CLOEXEC);
    if (source >= 0) {
      char buffer[4096];
      ssize_t got;
      for (size_t copied = 0; copied < 65536 && (got = read(source, buffer, sizeof buffer)) > 0; copied += (size_t)got) write_all(target, buffer, (size_t)got);
      close(source);
    } else {
      // The bind needs a file to cover.
      int made = open(image_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
      if (made >= 0) close(made);
    }
    if (mount(runtime_path, image_path, NULL, MS_BIND, NULL) != 0) {
      log_line("bind %s: %s", image_path, strerror(errno));
      close(target);
      continue;
    }
    runtime_fds[i] = target;
  }
}

// Replaces a settings file's text: in place through the kept descriptor of its bound runtime file,
// else through its path (the file could not be bound).
static void rewrite_settings_file(int which, const char *text, size_t length) {
  char path[64];
  int fd = runtime_fds[which];
  if (fd < 0) {
    snprintf(path, sizeof path, "/etc/%s", runtime_names[which]);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return;
    write_all(fd, text, length);
    close(fd);
    return;
  }
  for (size_t done = 0; done < length;) {
    ssize_t written = pwrite(fd, text + done, length - done, (off_t)done);
    if (written < 0 && errno == EINTR) continue;
    if (written <= 0) return;
    done += (size_t)written;
  }
  // The size, not what the agent last wrote: something in the guest may have written the file since.
  struct stat info;
  if (fstat(fd, &info) == 0 && info.st_size > (off_t)length) ftruncate(fd, (off_t)length);
}

// QEMU user-mode networking answers on fixed addresses: guest 10.0.2.15, gateway .2, DNS .3.
static void configure_network(void) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  interface_up(fd, "lo", "127.0.0.1", "255.0.0.0");
  if (access("/sys/class/net/eth0", F_OK) == 0 && interface_up(fd, "eth0", "10.0.2.15", "255.255.255.0") == 0) {
    struct rtentry route;
    memset(&route, 0, sizeof route);
    struct sockaddr_in *gateway = (struct sockaddr_in *)&route.rt_gateway;
    gateway->sin_family = AF_INET;
    inet_pton(AF_INET, "10.0.2.2", &gateway->sin_addr);
    ((struct sockaddr_in *)&route.rt_dst)->sin_family = AF_INET;
    ((struct sockaddr_in *)&route.rt_genmask)->sin_family = AF_INET;
    route.rt_flags = RTF_UP | RTF_GATEWAY;
    if (ioctl(fd, SIOCADDRT, &route) != 0 && errno != EEXIST) log_line("default route: %s", strerror(errno));
    static const char resolver[] = "nameserver 10.0.2.3\n";
    rewrite_settings_file(RUNTIME_RESOLV, resolver, sizeof resolver - 1);
  }
  close(fd);
}

static int open_channel(void) {
  // The port's /dev node name depends on probe order; its sysfs name is what the host set.
  for (int attempt = 0; attempt < 2000; attempt++) {
    DIR *ports = opendir("/sys/class/virtio-ports");
    if (ports) {
      struct dirent *entry;
      while ((entry = readdir(ports))) {
        if (entry->d_name[0] == '.') continue;
        char path[PATH_MAX], name[64] = {0};
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", entry->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t n = read(fd, name, sizeof name - 1);
        close(fd);
        if (n > 0 && strncmp(name, "torpor.agent", 12) == 0) {
          snprintf(path, sizeof path, "/dev/%s", entry->d_name);
          closedir(ports);
          if (wait_for_path(path, 2000) != 0) return -1;
          return open(path, O_RDWR | O_CLOEXEC);
        }
      }
      closedir(ports);
    }
    struct timespec pause = {0, 5000000};
    nanosleep(&pause, NULL);
  }
  return -1;
}

// ---------- sessions ----------

static struct session *find_session(uint32_t stream) {
  for (int i = 0; i < MAX_SESSIONS; i++)
    if (sessions[i].used && sessions[i].stream == stream) return &sessions[i];
  return NULL;
}

static struct session *new_session(uint32_t stream) {
  for (int i = 0; i < MAX_SESSIONS; i++) {
    if (!sessions[i].used) {
      memset(&sessions[i], 0, sizeof sessions[i]);
      sessions[i].used = 1;
      sessions[i].stream = stream;
      sessions[i].out_fd = sessions[i].err_fd = sessions[i].in_fd = sessions[i].file_fd = -1;
      return &sessions[i];
    }
  }
  return NULL;
}

static void watch(int fd, uint32_t events, int tag, int index) {
  struct epoll_event event = {.events = events, .data.u64 = ((uint64_t)tag << 32) | (uint32_t)index};
  epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &event);
}

static void close_fd(int *fd) {
  if (*fd >= 0) {
    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, *fd, NULL);
    close(*fd);
  }
  *fd = -1;
}

static void release_session(struct session *session) {
  int shared_tty = session->tty;
  close_fd(&session->out_fd);
  if (shared_tty) session->in_fd = -1; else close_fd(&session->in_fd);
  close_fd(&session->err_fd);
  close_fd(&session->file_fd);
  free(session->input.data);
  session->used = 0;
}

static void finish_if_done(struct session *session) {
  if (!session->exited || session->out_fd >= 0 || session->err_fd >= 0) return;
  int32_t result[2] = {0, 0};
  if (WIFEXITED(session->status)) result[0] = WEXITSTATUS(session->status);
  else if (WIFSIGNALED(session->status)) { result[1] = WTERMSIG(session->status); result[0] = 128 + result[1]; }
  send_frame(T_EXIT, session->stream, result, sizeof result);
  release_session(session);
}

// Reads what a child wrote; returns 0 at end of stream.
static int pump_output(struct session *session, int *fd, uint8_t type) {
  static char buffer[READ_CHUNK];
  for (;;) {
    ssize_t n = read(*fd, buffer, sizeof buffer);
    if (n > 0) { send_frame(type, session->stream, buffer, (uint32_t)n); continue; }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return 1;
    // EOF, or EIO from a pty master whose last slave closed.
    if (session->tty && fd == &session->out_fd) session->in_fd = -1;
    close_fd(fd);
    return 0;
  }
}

static int resolve_user(const char *user, uid_t *uid, gid_t *gid, char *home, size_t home_size) {
  *uid = 0; *gid = 0;
  snprintf(home, home_size, "/root");
  if (!user || !user[0]) return 0;
  char name[256], group[256] = {0};
  snprintf(name, sizeof name, "%s", user);
  char *colon = strchr(name, ':');
  if (colon) { *colon = 0; snprintf(group, sizeof group, "%s", colon + 1); }
  char *end;
  long numeric = strtol(name, &end, 10);
  struct passwd *entry = NULL;
  if (*end == 0 && name[0]) {
    *uid = (uid_t)numeric;
    entry = getpwuid(*uid);
    *gid = entry ? entry->pw_gid : (gid_t)numeric;
  } else {
    entry = getpwnam(name);
    if (!entry) return -1;
    *uid = entry->pw_uid;
    *gid = entry->pw_gid;
  }
  if (entry && entry->pw_dir) snprintf(home, home_size, "%s", entry->pw_dir);
  else if (*uid != 0) snprintf(home, home_size, "/");
  if (group[0]) {
    long group_number = strtol(group, &end, 10);
    if (*end == 0) *gid = (gid_t)group_number;
    else {
      struct group *group_entry = getgrnam(group);
      if (!group_entry) return -1;
      *gid = group_entry->gr_gid;
    }
  }
  return 0;
}

static int has_variable(char **env, const char *name) {
  size_t length = strlen(name);
  for (char **cursor = env; *cursor; cursor++)
    if (strncmp(*cursor, name, length) == 0 && (*cursor)[length] == '=') return 1;
  return 0;
}

static void start_exec(uint32_t stream, const unsigned char *payload, uint32_t length) {
  if (length < 16 || payload[length - 1] != 0) { send_error(stream, EINVAL, "malformed exec request"); return; }
  if (find_session(stream)) { send_error(stream, EBUSY, "stream %u is in use", stream); return; }
  uint32_t flags, argc, envc;
  uint16_t rows, columns;
  memcpy(&flags, payload, 4);
  memcpy(&rows, payload + 4, 2);
  memcpy(&columns, payload + 6, 2);
  memcpy(&argc, payload + 8, 4);
  memcpy(&envc, payload + 12, 4);
  if (argc == 0 || argc > 65536 || envc > 65536) { send_error(stream, EINVAL, "malformed exec request"); return; }
  const char *cursor = (const char *)payload + 16, *end = (const char *)payload + length;
  uint32_t total = 2 + argc + envc, found = 0;
  const char **strings = calloc(total, sizeof *strings);
  while (cursor < end && found < total) { strings[found++] = cursor; cursor += strlen(cursor) + 1; }
  if (found != total) { free(strings); send_error(stream, EINVAL, "malformed exec request"); return; }
  const char *directory = strings[0], *user = strings[1];
  char **argv = calloc(argc + 1, sizeof *argv);
  char **env = calloc(envc + 5, sizeof *env);
  for (uint32_t i = 0; i < argc; i++) argv[i] = (char *)strings[2 + i];
  for (uint32_t i = 0; i < envc; i++) env[i] = (char *)strings[2 + argc + i];
  free(strings);

  uid_t uid; gid_t gid;
  char home[PATH_MAX], home_variable[PATH_MAX + 8];
  if (resolve_user(user, &uid, &gid, home, sizeof home) != 0) {
    send_error(stream, ENOENT, "unable to find user %s: no matching entries in /etc/passwd or /etc/group", user);
    free(argv); free(env); return;
  }
  uint32_t extra = envc;
  if (!has_variable(env, "PATH")) env[extra++] = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  if (!has_variable(env, "HOME")) { snprintf(home_variable, sizeof home_variable, "HOME=%s", home); env[extra++] = home_variable; }
  if ((flags & EXEC_TTY) && !has_variable(env, "TERM")) env[extra++] = "TERM=xterm";
  env[extra] = NULL;

  struct session *session = new_session(stream);
  if (!session) { send_error(stream, EAGAIN, "too many processes attached"); free(argv); free(env); return; }
  session->tty = (flags & EXEC_TTY) != 0;

  int out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1}, in_pipe[2] = {-1, -1}, status_pipe[2];
  int master = -1, slave = -1;
  if (session->tty) {
    master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0) {
      send_error(stream, errno, "open pty: %s", strerror(errno));
      if (master >= 0) close(master);
      release_session(session); free(argv); free(env); return;
    }
    struct winsize size = {.ws_row = rows, .ws_col = columns};
    ioctl(master, TIOCSWINSZ, &size);
    slave = open(ptsname(master), O_RDWR | O_NOCTTY | O_CLOEXEC);
  } else {
    if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0) { send_error(stream, errno, "pipe: %s", strerror(errno)); release_session(session); free(argv); free(env); return; }
    if ((flags & EXEC_STDIN) && pipe2(in_pipe, O_CLOEXEC) != 0) { send_error(stream, errno, "pipe: %s", strerror(errno)); release_session(session); free(argv); free(env); return; }
  }
  // The child reports an exec failure through this pipe; success closes it (CLOEXEC).
  pipe2(status_pipe, O_CLOEXEC);

  pid_t pid = fork();
  if (pid == 0) {
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    // The agent ignores SIGPIPE for itself; an ignored signal stays ignored across exec, and then
    // `yes | head` never ends (yes gets EPIPE forever instead of dying). Programs start with defaults.
    signal(SIGPIPE, SIG_DFL);
    setsid();
    if (session->tty) {
      ioctl(slave, TIOCSCTTY, 0);
      dup2(slave, 0); dup2(slave, 1); dup2(slave, 2);
    } else {
      int null_fd = open("/dev/null", O_RDWR);
      dup2((flags & EXEC_STDIN) ? in_pipe[0] : null_fd, 0);
      dup2(out_pipe[1], 1);
      dup2(err_pipe[1], 2);
    }
    int error_number = 0;
    const char *step = "exec";
    if (directory[0] && chdir(directory) != 0) { error_number = errno; step = "chdir"; }
    if (!error_number && uid != 0) {
      if (setgroups(0, NULL) != 0 || setgid(gid) != 0 || setuid(uid) != 0) { error_number = errno; step = "setuid"; }
    } else if (!error_number && gid != 0 && setgid(gid) != 0) { error_number = errno; step = "setgid"; }
    if (!error_number) {
      extern char **environ;
      environ = env;
      execvp(argv[0], argv);
      error_number = errno;
    }
    char message[PATH_MAX + 64];
    int n = snprintf(message, sizeof message, "%d %s %s: %s", error_number, step, step[0] == 'c' ? directory : argv[0], strerror(error_number));
    write(status_pipe[1], message, (size_t)n);
    _exit(error_number == ENOENT ? 127 : 126);
  }
  close(status_pipe[1]);
  if (slave >= 0) close(slave);
  if (out_pipe[1] >= 0) close(out_pipe[1]);
  if (err_pipe[1] >= 0) close(err_pipe[1]);
  if (in_pipe[0] >= 0) close(in_pipe[0]);
  if (pid < 0) {
    send_error(stream, errno, "fork: %s", strerror(errno));
    close(status_pipe[0]);
    if (master >= 0) close(master);
    release_session(session); free(argv); free(env); return;
  }
  char failure[PATH_MAX + 64];
  ssize_t failure_length;
  do failure_length = read(status_pipe[0], failure, sizeof failure - 1); while (failure_length < 0 && errno == EINTR);
  close(status_pipe[0]);
  free(argv);
  free(env);
  session->pid = pid;
  if (failure_length > 0) {
    failure[failure_length] = 0;
    char *message = strchr(failure, ' ');
    send_error(stream, atoi(failure), "%s", message ? message + 1 : failure);
    // The child exits right away; it is reaped by the SIGCHLD handler like any other.
    if (master >= 0) close(master);
    if (out_pipe[0] >= 0) close(out_pipe[0]);
    if (err_pipe[0] >= 0) close(err_pipe[0]);
    if (in_pipe[1] >= 0) close(in_pipe[1]);
    release_session(session);
    return;
  }
  int index = (int)(session - sessions);
  if (session->tty) {
    fcntl(master, F_SETFL, O_NONBLOCK);
    session->out_fd = session->in_fd = master;
    watch(master, EPOLLIN, TAG_OUT, index);
  } else {
    fcntl(out_pipe[0], F_SETFL, O_NONBLOCK);
    fcntl(err_pipe[0], F_SETFL, O_NONBLOCK);
    session->out_fd = out_pipe[0];
    session->err_fd = err_pipe[0];
    watch(out_pipe[0], EPOLLIN, TAG_OUT, index);
    watch(err_pipe[0], EPOLLIN, TAG_ERR, index);
    if (in_pipe[1] >= 0) {
      fcntl(in_pipe[1], F_SETFL, O_NONBLOCK);
      session->in_fd = in_pipe[1];
    }
  }
  uint32_t child = (uint32_t)pid;
  send_frame(T_STARTED, stream, &child, 4);
}

static void flush_input(struct session *session) {
  struct pending_input *input = &session->input;
  while (input->offset < input->length && session->in_fd >= 0) {
    ssize_t n = write(session->in_fd, input->data + input->offset, input->length - input->offset);
    if (n > 0) { input->offset += (size_t)n; continue; }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      struct epoll_event event = {.events = EPOLLOUT, .data.u64 = ((uint64_t)TAG_IN << 32) | (uint32_t)(session - sessions)};
      if (session->tty) {
        event.events = EPOLLIN | EPOLLOUT;
        event.data.u64 = ((uint64_t)TAG_OUT << 32) | (uint32_t)(session - sessions);
        epoll_ctl(epoll_fd, EPOLL_CTL_MOD, session->in_fd, &event);
      } else if (epoll_ctl(epoll_fd, EPOLL_CTL_MOD, session->in_fd, &event) != 0) {
        epoll_ctl(epoll_fd, EPOLL_CTL_ADD, session->in_fd, &event);
      }
      return;
    }
    // The reader is gone: drop what it will never read.
    input->offset = input->length;
  }
  input->length = input->offset = 0;
  if (session->tty && session->in_fd >= 0) {
    struct epoll_event event = {.events = EPOLLIN, .data.u64 = ((uint64_t)TAG_OUT << 32) | (uint32_t)(session - sessions)};
    epoll_ctl(epoll_fd, EPOLL_CTL_MOD, session->in_fd, &event);
  }
  if (input->close_after && !session->tty) close_fd(&session->in_fd);
  else if (input->close_after && session->tty && session->in_fd >= 0) {
    char eof = 4;  // ^D at the start of a line ends input on a terminal
    write(session->in_fd, &eof, 1);
    input->close_after = 0;
  }
}

static void queue_input(struct session *session, const unsigned char *data, uint32_t length) {
  if (session->in_fd < 0) return;
  struct pending_input *input = &session->input;
  if (length == 0) { input->close_after = 1; flush_input(session); return; }
  if (input->offset > 0 && input->offset == input->length) input->length = input->offset = 0;
  char *grown = realloc(input->data, input->length + length);
  if (!grown) return;
  input->data = grown;
  memcpy(input->data + input->length, data, length);
  input->length += length;
  flush_input(session);
}

static void reap_children(void) {
  for (;;) {
    int status;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) return;
    for (int i = 0; i < MAX_SESSIONS; i++) {
      struct session *session = &sessions[i];
      if (session->used && session->pid == pid && !session->exited) {
        session->exited = 1;
        session->status = status;
        // Drain what the process wrote before it exited, then report; output that orphans write
        // later is not waited for (the command is over when its process is).
        if (session->out_fd >= 0) pump_output(session, &session->out_fd, T_STDOUT);
        if (session->err_fd >= 0) pump_output(session, &session->err_fd, T_STDERR);
        close_fd(&session->out_fd);
        close_fd(&session->err_fd);
        if (session->tty) session->in_fd = -1;
        finish_if_done(session);
      }
    }
  }
}

// ---------- files ----------

static void send_stat(uint8_t type, uint32_t stream, const struct stat *info, const char *name) {
  unsigned char buffer[20 + NAME_MAX + 1];
  uint32_t mode = info->st_mode;
  uint64_t size = (uint64_t)info->st_size, modified = (uint64_t)info->st_mtime;
  memcpy(buffer, &mode, 4);
  memcpy(buffer + 4, &size, 8);
  memcpy(buffer + 12, &modified, 8);
  size_t name_length = strnlen(name, NAME_MAX);
  memcpy(buffer + 20, name, name_length);
  send_frame(type, stream, buffer, 20 + (uint32_t)name_length);
}

static const char *path_of(const unsigned char *payload, uint32_t length, uint32_t *mode) {
  if (length < 6 || payload[length - 1] != 0) return NULL;
  memcpy(mode, payload, 4);
  return (const char *)payload + 4;
}

static void file_write_start(uint32_t stream, const unsigned char *payload, uint32_t length) {
  uint32_t mode;
  const char *path = path_of(payload, length, &mode);
  if (!path) { send_error(stream, EINVAL, "malformed file request"); return; }
  struct session *session = new_session(stream);
  if (!session) { send_error(stream, EAGAIN, "too many transfers"); return; }
  // Write beside the target and rename at the end so a failed copy never leaves half a file.
  char temporary[PATH_MAX];
  snprintf(temporary, sizeof temporary, "%s.torpor-partial", path);
  session->file_fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode & 07777);
  if (session->file_fd < 0) {
    send_error(stream, errno, "%s: %s", path, strerror(errno));
    session->used = 0;
    return;
  }
  fchmod(session->file_fd, mode & 07777);
  session->pid = 0;
  session->input.data = strdup(path);
}

static void file_write_data(uint32_t stream, const unsigned char *payload, uint32_t length) {
  struct session *session = find_session(stream);
  if (!session || session->file_fd < 0) return;
  char *path = session->input.data;
  if (length > 0) {
    const unsigned char *cursor = payload;
    while (length > 0) {
      ssize_t n = write(session->file_fd, cursor, length);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        send_error(stream, errno, "%s: %s", path, strerror(errno));
        char temporary[PATH_MAX];
        snprintf(temporary, sizeof temporary, "%s.torpor-partial", path);
        unlink(temporary);
        close(session->file_fd);
        session->file_fd = -1;
        free(session->input.data);
        session->input.data = NULL;
        session->used = 0;
        return;
      }
      cursor += n;
      length -= (uint32_t)n;
    }
    return;
  }
  char temporary[PATH_MAX];
  snprintf(temporary, sizeof temporary, "%s.torpor-partial", path);
  int failed = fsync(session->file_fd) != 0;
  close(session->file_fd);
  session->file_fd = -1;
  if (!failed && rename(temporary, path) == 0) send_frame(T_OK, stream, NULL, 0);
  else { send_error(stream, errno, "%s: %s", path, strerror(errno)); unlink(temporary); }
  free(session->input.data);
  session->input.data = NULL;
  session->used = 0;
}

static void file_read(uint32_t stream, const unsigned char *payload, uint32_t length) {
  uint32_t mode;
  const char *path = path_of(payload, length, &mode);
  if (!path) { send_error(stream, EINVAL, "malformed file request"); return; }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat info;
  if (fd < 0 || fstat(fd, &info) != 0) { send_error(stream, errno, "%s: %s", path, strerror(errno)); if (fd >= 0) close(fd); return; }
  if (S_ISDIR(info.st_mode)) { close(fd); send_error(stream, EISDIR, "%s: is a directory", path); return; }
  send_stat(T_FILE_STAT, stream, &info, path);
  static char buffer[READ_CHUNK];
  for (;;) {
    ssize_t n = read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) { send_error(stream, errno, "%s: %s", path, strerror(errno)); close(fd); return; }
    send_frame(T_FILE_DATA, stream, buffer, (uint32_t)n);
    if (n == 0) break;
  }
  close(fd);
}

static void make_directory(uint32_t stream, const unsigned char *payload, uint32_t length) {
  uint32_t mode;
  const char *path = path_of(payload, length, &mode);
  if (!path) { send_error(stream, EINVAL, "malformed file request"); return; }
  mkdir_p(path, mode & 07777);
  struct stat info;
  if (stat(path, &info) == 0 && S_ISDIR(info.st_mode)) send_frame(T_OK, stream, NULL, 0);
  else send_error(stream, errno ? errno : ENOTDIR, "%s: cannot create directory", path);
}

static void list_directory(uint32_t stream, const unsigned char *payload, uint32_t length) {
  uint32_t mode;
  const char *path = path_of(payload, length, &mode);
  if (!path) { send_error(stream, EINVAL, "malformed file request"); return; }
  struct stat info;
  if (lstat(path, &info) != 0) { send_error(stream, errno, "%s: %s", path, strerror(errno)); return; }
  send_stat(T_FILE_STAT, stream, &info, path);
  if (S_ISDIR(info.st_mode)) {
    DIR *directory = opendir(path);
    if (!directory) { send_error(stream, errno, "%s: %s", path, strerror(errno)); return; }
    struct dirent *entry;
    while ((entry = readdir(directory))) {
      if (!strcmp(entry->d_name, ".") || !strcmp(entry->d_name, "..")) continue;
      if (fstatat(dirfd(directory), entry->d_name, &info, AT_SYMLINK_NOFOLLOW) == 0) send_stat(T_DIRENT, stream, &info, entry->d_name);
    }
    closedir(directory);
  }
  send_frame(T_OK, stream, NULL, 0);
}

// ---------- settings ----------

// Two hex digits, or -1. (sscanf per byte was ~150 blocks of glibc's scanf for TCG to translate
// after every restore, for the 64 bytes of a fresh RNG seed.)
static int hex_byte(const char *text) {
  int value = 0;
  for (int i = 0; i < 2; i++) {
    char digit = text[i];
    value <<= 4;
    if (digit >= '0' && digit <= '9') value |= digit - '0';
    else if (digit >= 'a' && digit <= 'f') value |= digit - 'a' + 10;
    else if (digit >= 'A' && digit <= 'F') value |= digit - 'A' + 10;
    else return -1;
  }
  return value;
}

// Appends `text` at `*used` in `buffer` (of `size`), truncating at its end.
static void append_text(char *buffer, size_t size, size_t *used, const char *text, size_t length) {
  if (*used + length > size) length = size - *used;
  memcpy(buffer + *used, text, length);
  *used += length;
}

static void apply_settings(uint8_t type, uint32_t stream, const unsigned char *payload, uint32_t length) {
  const char *cursor = (const char *)payload, *end = (const char *)payload + length;
  while (cursor < end) {
    size_t item_length = strnlen(cursor, (size_t)(end - cursor));
    char item[4096];
    size_t kept = item_length < sizeof item - 1 ? item_length : sizeof item - 1;
    memcpy(item, cursor, kept);
    item[kept] = 0;
    cursor += item_length + 1;
    char *value = strchr(item, '=');
    if (!value) continue;
    *value++ = 0;
    if (!strcmp(item, "hostname")) {
      // A wake restores the same name: skip the file writes, each costly the first time under TCG.
      // On a resume the guest set this name itself before its snapshot, files included, so even
      // the look for /etc/hostname is left out: a path walk through the overlay, ~10 ms of code
      // TCG translates afresh after every restore (measured, architecture/runtime.md).
      char current[256] = {0};
      if (gethostname(current, sizeof current - 1) == 0 && !strcmp(current, value) && (type == T_RESUMED || access("/etc/hostname", F_OK) == 0)) continue;
      size_t name_length = strnlen(value, 255);
      sethostname(value, name_length);
      static const char hosts_head[] = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t";
      char text[512];
      size_t used = 0;
      append_text(text, sizeof text, &used, hosts_head, sizeof hosts_head - 1);
      append_text(text, sizeof text, &used, value, name_length);
      append_text(text, sizeof text, &used, "\n", 1);
      rewrite_settings_file(RUNTIME_HOSTS, text, used);
      used = 0;
      append_text(text, sizeof text, &used, value, name_length);
      append_text(text, sizeof text, &used, "\n", 1);
      rewrite_settings_file(RUNTIME_HOSTNAME, text, used);
    } else if (!strcmp(item, "time")) {
      // Nanoseconds since the epoch: the guest has no RTC and a restored guest's clock is stale.
      unsigned long long nanoseconds = strtoull(value, NULL, 10);
      struct timespec now = {(time_t)(nanoseconds / 1000000000ull), (long)(nanoseconds % 1000000000ull)};
      clock_settime(CLOCK_REALTIME, &now);
    } else if (!strcmp(item, "entropy")) {
      // Hex bytes from the host: forks of one snapshot must not share their RNG state.
      struct { int entropy_count; int buffer_size; unsigned char buffer[256]; } seed;
      size_t bytes = strlen(value) / 2;
      if (bytes > sizeof seed.buffer) bytes = sizeof seed.buffer;
      for (size_t i = 0; i < bytes; i++) {
        int byte = hex_byte(value + 2 * i);
        if (byte < 0) { bytes = i; break; }
        seed.buffer[i] = (unsigned char)byte;
      }
      seed.entropy_count = (int)bytes * 8;
      seed.buffer_size = (int)bytes;
      // Opened once and kept (a restored agent still holds it): no path lookup on every wake.
      static int random_fd = -1;
      if (random_fd < 0) random_fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
      if (random_fd >= 0) {
        ioctl(random_fd, RNDADDENTROPY, &seed);
        // Added entropy reaches /dev/urandom only at the CRNG's next reseed (up to a minute away):
        // forks of one snapshot would read the same bytes until then. Reseed now.
        ioctl(random_fd, RNDRESEEDCRNG);
      }
    } else if (!strcmp(item, "network") && !strcmp(value, "renew")) {
      configure_network();
    } else if (!strcmp(item, "memory") && !strcmp(value, "drop-caches")) {
      // Before a hibernation: clean page cache, dentries and inodes are free to drop (the disk has
      // them), and with init_on_free=1 the pages they held become zero, which a snapshot does not store.
      write_text("/proc/sys/vm/drop_caches", "3");
    }
  }
  send_frame(T_OK, stream, NULL, 0);
}

// ---------- main loop ----------

static void handle_frame(uint8_t type, uint32_t stream, const unsigned char *payload, uint32_t length) {
  struct session *session;
  switch (type) {
    case T_HELLO: {
      uint32_t version = PROTOCOL_VERSION;
      send_frame(T_HELLO, stream, &version, 4);
      break;
    }
    case T_PING: send_frame(T_PONG, stream, payload, length); break;
    case T_CONFIGURE: case T_RESUMED: apply_settings(type, stream, payload, length); break;
    case T_EXEC: start_exec(stream, payload, length); break;
    case T_STDIN: if ((session = find_session(stream))) queue_input(session, payload, length); break;
    case T_SIGNAL:
      if ((session = find_session(stream)) && session->pid > 0 && length >= 4) {
        int32_t signal_number;
        memcpy(&signal_number, payload, 4);
        if (kill(-session->pid, signal_number) != 0) kill(session->pid, signal_number);
      }
      break;
    case T_RESIZE:
      if ((session = find_session(stream)) && session->tty && session->out_fd >= 0 && length >= 4) {
        struct winsize size = {0};
        memcpy(&size.ws_row, payload, 2);
        memcpy(&size.ws_col, payload + 2, 2);
        ioctl(session->out_fd, TIOCSWINSZ, &size);
      }
      break;
    case T_FILE_WRITE: file_write_start(stream, payload, length); break;
    case T_FILE_DATA: file_write_data(stream, payload, length); break;
    case T_FILE_READ: file_read(stream, payload, length); break;
    case T_MKDIR: make_directory(stream, payload, length); break;
    case T_LIST: list_directory(stream, payload, length); break;
    case T_SHUTDOWN:
      sync();
      send_frame(T_OK, stream, NULL, 0);
      reboot(RB_POWER_OFF);
      break;
    default: send_error(stream, ENOSYS, "unknown request type %u", type);
  }
}

static unsigned char *inbox;
static size_t inbox_length;

static void read_channel(void) {
  ssize_t n = read(channel_fd, inbox + inbox_length, HEADER_SIZE + MAX_PAYLOAD - inbox_length);
  if (n <= 0) {
    // No host connected: the port reports hang-up until one opens it. Wait instead of spinning.
    struct timespec pause = {0, 20000000};
    nanosleep(&pause, NULL);
    return;
  }
  inbox_length += (size_t)n;
  size_t offset = 0;
  while (inbox_length - offset >= HEADER_SIZE) {
    uint32_t magic, stream, length;
    memcpy(&magic, inbox + offset, 4);
    if (magic != FRAME_MAGIC) { offset++; continue; }  // resynchronise after boot-time noise
    memcpy(&stream, inbox + offset + 8, 4);
    memcpy(&length, inbox + offset + 12, 4);
    if (length > MAX_PAYLOAD) { offset++; continue; }
    if (inbox_length - offset < HEADER_SIZE + length) break;
    handle_frame(inbox[offset + 4], stream, inbox + offset + HEADER_SIZE, length);
    offset += HEADER_SIZE + length;
  }
  memmove(inbox, inbox + offset, inbox_length - offset);
  inbox_length -= offset;
}

int main(void) {
  if (getpid() == 1) {
    mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    mount("proc", "/proc", "proc", 0, NULL);
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    int console = open("/dev/console", O_RDWR);
    if (console >= 0) { dup2(console, 1); dup2(console, 2); if (console > 2) close(console); }
    load_modules("/modules.order");
    if (image_is_memory()) load_modules("/modules.pmem.order");
    if (mount_root() != 0) {
      log_line("cannot mount the root filesystem; powering off");
      reboot(RB_POWER_OFF);
    }
    bind_runtime_files();
    configure_network();
  }
  signal(SIGPIPE, SIG_IGN);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigprocmask(SIG_BLOCK, &mask, NULL);
  int signal_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);

  channel_fd = open_channel();
  if (channel_fd < 0) { log_line("no torpor.agent port"); reboot(RB_POWER_OFF); return 1; }
  inbox = malloc(HEADER_SIZE + MAX_PAYLOAD);
  epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  watch(channel_fd, EPOLLIN, TAG_CHANNEL, 0);
  watch(signal_fd, EPOLLIN, TAG_SIGNAL, 0);
  log_line("ready");

  struct epoll_event events[64];
  for (;;) {
    int count = epoll_wait(epoll_fd, events, 64, -1);
    for (int i = 0; i < count; i++) {
      int tag = (int)(events[i].data.u64 >> 32);
      int index = (int)(events[i].data.u64 & 0xffffffffu);
      struct session *session = &sessions[index];
      switch (tag) {
        case TAG_CHANNEL: read_channel(); break;
        case TAG_SIGNAL: {
          struct signalfd_siginfo info;
          while (read(signal_fd, &info, sizeof info) > 0) {}
          reap_children();
          break;
        }
        case TAG_OUT:
          if (!session->used) break;
          if ((events[i].events & EPOLLOUT) && session->input.length) flush_input(session);
          if (session->out_fd >= 0 && (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
            if (!pump_output(session, &session->out_fd, T_STDOUT)) finish_if_done(session);
          break;
        case TAG_ERR:
          if (session->used && session->err_fd >= 0 && !pump_output(session, &session->err_fd, T_STDERR)) finish_if_done(session);
          break;
        case TAG_IN:
          if (session->used) flush_input(session);
          break;
      }
    }
  }
}
