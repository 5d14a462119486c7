/*
 * A stand-in for libcuda.so.1 for the FFI tests: two fake GPUs and the
 * process checkpoint API's state machine with its error codes
 * (RUNNING -> lock -> LOCKED -> checkpoint -> CHECKPOINTED -> restore ->
 * LOCKED -> unlock -> RUNNING; anything else is CUDA_ERROR_ILLEGAL_STATE).
 * Build with -DNO_CHECKPOINT for a driver without the checkpoint API.
 * Like the real driver (seen on an H200, driver 580), cuInit fails with
 * CUDA_ERROR_OPERATING_SYSTEM where the process's PID does not name it in
 * /proc: in a PID namespace of its own that shares the node's /proc.
 * Checkpoint and restore take FAKE_CUDA_COPY_MS milliseconds (env, read at
 * each call), as the real driver's copies take seconds. Calls may come from
 * several threads (the platform makes the checkpoint calls nonblocking): the
 * state table is behind a mutex, the copy delay outside it.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum {
  SUCCESS = 0, INVALID_VALUE = 1, NOT_INITIALIZED = 3, INVALID_DEVICE = 101,
  OPERATING_SYSTEM = 304, ILLEGAL_STATE = 401, NOT_FOUND = 500
};
/* COPYING: a checkpoint or restore under way (the real driver's CHECKPOINTING, 4; 3 is
 * FAILED); any other call on the process is refused. */
enum { RUNNING = 0, LOCKED = 1, CHECKPOINTED = 2, COPYING = 4 };

static int initialized = 0;
static int pids[64];
static int states[64];
static unsigned int last_lock_timeout = 0;

int cuInit(unsigned int flags) {
  if (flags != 0) return INVALID_VALUE;
  char self[32] = {0};
  ssize_t n = readlink("/proc/self", self, sizeof self - 1);
  if (n <= 0 || atoi(self) != getpid()) return OPERATING_SYSTEM;
  initialized = 1;
  return SUCCESS;
}
int cuDriverGetVersion(int *v) {
  if (!v) return INVALID_VALUE;
  *v = 12080;
  return SUCCESS;
}
int cuDeviceGetCount(int *n) {
  if (!initialized) return NOT_INITIALIZED;
  *n = 2;
  return SUCCESS;
}
int cuDeviceGet(int *dev, int ordinal) {
  if (!initialized) return NOT_INITIALIZED;
  if (ordinal < 0 || ordinal > 1) return INVALID_DEVICE;
  *dev = ordinal;
  return SUCCESS;
}
int cuDeviceGetName(char *name, int len, int dev) {
  if (dev < 0 || dev > 1) return INVALID_DEVICE;
  strncpy(name, "Fake H100 80GB HBM3", (size_t)len);
  return SUCCESS;
}
int cuDeviceTotalMem_v2(size_t *bytes, int dev) {
  if (dev < 0 || dev > 1) return INVALID_DEVICE;
  *bytes = (size_t)81559 * 1024 * 1024;
  return SUCCESS;
}
int cuDeviceGetUuid(unsigned char *uuid, int dev) {
  if (dev < 0 || dev > 1) return INVALID_DEVICE;
  for (int i = 0; i < 16; i++) uuid[i] = (unsigned char)(dev * 16 + i);
  return SUCCESS;
}
#ifndef NO_UUID_V2
/* The physical GPU's UUID, but with FAKE_CUDA_MIG set: device 1 is a MIG instance of its own. */
int cuDeviceGetUuid_v2(unsigned char *uuid, int dev) {
  int r = cuDeviceGetUuid(uuid, dev);
  if (r == SUCCESS && dev == 1 && getenv("FAKE_CUDA_MIG")) {
    for (int i = 0; i < 16; i++) uuid[i] = (unsigned char)(0xa0 + i);
  }
  return r;
}
#endif

#ifndef NO_CHECKPOINT
static void copy_delay(void) {
  const char *ms = getenv("FAKE_CUDA_COPY_MS");
  if (ms) usleep((useconds_t)atoi(ms) * 1000);
}

/* Processes are known once they appear; pid 0 and below are invalid, pid 424242 is unknown. */
static int *state_of(int pid) {
  if (pid == 424242) return NULL;
  for (int i = 0; i < 64; i++) if (pids[i] == pid) return &states[i];
  for (int i = 0; i < 64; i++) if (pids[i] == 0) { pids[i] = pid; states[i] = RUNNING; return &states[i]; }
  return NULL;
}
static pthread_mutex_t table = PTHREAD_MUTEX_INITIALIZER;
/* The state of `pid` under the table's lock, or the error code (the lock not held). */
static int locked_state_of(int pid, int **s) {
  if (!initialized) return NOT_INITIALIZED;
  if (pid <= 0) return INVALID_VALUE;
  pthread_mutex_lock(&table);
  *s = state_of(pid);
  if (*s) return SUCCESS;
  pthread_mutex_unlock(&table);
  return NOT_FOUND;
}
#define PROLOGUE \
  int *s; \
  int found = locked_state_of(pid, &s); \
  if (found != SUCCESS) return found;
#define RETURN(code) do { pthread_mutex_unlock(&table); return (code); } while (0)

int cuCheckpointProcessGetState(int pid, int *state) {
  PROLOGUE
  *state = *s;
  RETURN(SUCCESS);
}
int cuCheckpointProcessLock(int pid, void *args) {
  PROLOGUE
  if (*s != RUNNING) RETURN(ILLEGAL_STATE);
  if (args) memcpy(&last_lock_timeout, args, sizeof last_lock_timeout);
  *s = LOCKED;
  RETURN(SUCCESS);
}
/* Moves `pid` from `from` to `to`, taking the copy's time between the two. */
static int copy_step(int pid, int from, int to) {
  PROLOGUE
  if (*s != from) RETURN(ILLEGAL_STATE);
  *s = COPYING;
  pthread_mutex_unlock(&table);
  copy_delay();
  pthread_mutex_lock(&table);
  *s = to;
  RETURN(SUCCESS);
}
int cuCheckpointProcessCheckpoint(int pid, void *args) {
  (void)args;
#ifdef CHECKPOINT_RESULT
  /* The driver refuses (as for UVM or IPC memory): the process stays locked. */
  { PROLOGUE if (*s != LOCKED) RETURN(ILLEGAL_STATE); RETURN(CHECKPOINT_RESULT); }
#endif
  return copy_step(pid, LOCKED, CHECKPOINTED);
}
int cuCheckpointProcessRestore(int pid, void *args) {
  (void)args;
  return copy_step(pid, CHECKPOINTED, LOCKED);
}
int cuCheckpointProcessUnlock(int pid, void *args) {
  (void)args;
  PROLOGUE
  if (*s != LOCKED) RETURN(ILLEGAL_STATE);
  *s = RUNNING;
  RETURN(SUCCESS);
}
int cuCheckpointProcessGetRestoreThreadId(int pid, int *tid) {
  PROLOGUE
  /* The fake's restore thread id echoes the last lock timeout, so the test
     can see that the lock arguments crossed the FFI boundary intact. */
  *tid = pid + (int)last_lock_timeout;
  RETURN(SUCCESS);
}
#endif
