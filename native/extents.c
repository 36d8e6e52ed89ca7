/*
 * Prints the data extents of a file as "start end" lines (end exclusive, bytes), one per line.
 * With --allocated: every range the file system allocated, also unwritten (preallocated, reading
 * as zeros) ranges that SEEK_DATA calls holes, through FIEMAP (falls back to SEEK_DATA where the file
 * system has no FIEMAP). QEMU's copy-before-write marks a zero range it copied only that way.
 *
 * Node has no SEEK_DATA/SEEK_HOLE: without them the snapshot store would have to read every
 * byte of a sparse file, and a 4 GiB disk layer with 30 MiB written costs seconds of zero reads.
 * A file system without hole reporting makes SEEK_DATA return the whole file, which is still
 * correct, only slower.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <linux/fs.h>
#include <linux/fiemap.h>

/* 1: printed every allocated extent; 0: FIEMAP is not supported here; -1: failed. */
static int print_allocated(int fd, const char *name) {
  enum { batch = 512 };
  struct fiemap *map = calloc(1, sizeof(struct fiemap) + batch * sizeof(struct fiemap_extent));
  if (!map) return -1;
  unsigned long long position = 0;
  /* SYNC: ranges written but not yet allocated (delayed allocation) are allocated first. */
  unsigned int flags = FIEMAP_FLAG_SYNC;
  for (;;) {
    memset(map, 0, sizeof(struct fiemap));
    map->fm_start = position;
    map->fm_length = ~0ULL - position;
    map->fm_flags = flags;
    map->fm_extent_count = batch;
    if (ioctl(fd, FS_IOC_FIEMAP, map) != 0) {
      int error = errno;
      free(map);
      if (error == EOPNOTSUPP || error == ENOTTY) return 0;
      fprintf(stderr, "%s: FIEMAP: %s\n", name, strerror(error));
      return -1;
    }
    flags = 0;
    if (map->fm_mapped_extents == 0) break;
    int last = 0;
    for (unsigned int index = 0; index < map->fm_mapped_extents; index++) {
      struct fiemap_extent *extent = &map->fm_extents[index];
      printf("%llu %llu\n", (unsigned long long)extent->fe_logical, (unsigned long long)(extent->fe_logical + extent->fe_length));
      position = extent->fe_logical + extent->fe_length;
      if (extent->fe_flags & FIEMAP_EXTENT_LAST) last = 1;
    }
    if (last) break;
  }
  free(map);
  return 1;
}

int main(int argc, char **argv) {
  int allocated = argc == 3 && strcmp(argv[1], "--allocated") == 0;
  if (argc != 2 && !allocated) {
    fprintf(stderr, "usage: %s [--allocated] FILE\n", argv[0]);
    return 2;
  }
  if (allocated) argv++;
  int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    fprintf(stderr, "%s: %s\n", argv[1], strerror(errno));
    return 1;
  }
  struct stat status;
  if (fstat(fd, &status) != 0) {
    fprintf(stderr, "%s: %s\n", argv[1], strerror(errno));
    return 1;
  }
  /* Big output buffer: a fragmented tmpfs file can have tens of thousands of extents. */
  static char buffer[1 << 20];
  setvbuf(stdout, buffer, _IOFBF, sizeof buffer);
  if (allocated) {
    int result = print_allocated(fd, argv[1]);
    if (result < 0) return 1;
    if (result > 0) {
      if (fflush(stdout) != 0) return 1;
      return 0;
    }
  }
  off_t size = status.st_size;
  off_t position = 0;
  while (position < size) {
    off_t data = lseek(fd, position, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break; /* only a hole remains */
      fprintf(stderr, "%s: SEEK_DATA: %s\n", argv[1], strerror(errno));
      return 1;
    }
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0) {
      fprintf(stderr, "%s: SEEK_HOLE: %s\n", argv[1], strerror(errno));
      return 1;
    }
    if (hole > size) hole = size;
    printf("%lld %lld\n", (long long)data, (long long)hole);
    position = hole;
  }
  if (fflush(stdout) != 0) {
    fprintf(stderr, "stdout: %s\n", strerror(errno));
    return 1;
  }
  close(fd);
  return 0;
}
