/* The senders of bench/coap_non.py, in C so that the sender is never the limit:
 * a Python loop of sock.send() costs about as much CPU per datagram as the broker's
 * read of it, so it would measure itself.  Built at run time by bench/coap_non.py
 * (gcc -O2 -shared -fPIC) and called through ctypes, which releases the GIL.
 *
 * Both loops run until *stop is set, add what they sent to *sent after each system
 * call (the parent reads it while they run), and pace themselves to `rate` messages a
 * second when rate > 0 (unpaced at 0).  The socket is non-blocking: a full send
 * buffer is waited for with poll(), so that *stop is seen within 100 ms.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void pace(double start, long long sent, double rate) {
    if (rate <= 0) return;
    double due = start + sent / rate, wait = due - now_s();
    if (wait > 0) {
        struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

static int wait_writable(int fd) {
    struct pollfd p = {fd, POLLOUT, 0};
    return poll(&p, 1, 100);
}

/* CoAP datagrams on a connected UDP socket, `batch` per sendmmsg(): copies of
 * `tmpl` (len bytes) with the message id (bytes 2-3) counting up from `first_mid`
 * and the token's first two bytes (4-5, when the token has them) the same. */
long long blast_udp(int fd, const unsigned char *tmpl, int len, int batch, double rate,
                    int first_mid, volatile long long *sent, volatile int *stop) {
    if (batch < 1) batch = 1;
    if (batch > 1024) batch = 1024;
    unsigned char *bufs = malloc((size_t)batch * len);
    struct mmsghdr *msgs = calloc(batch, sizeof *msgs);
    struct iovec *iov = calloc(batch, sizeof *iov);
    int tkl = tmpl[0] & 15;
    for (int i = 0; i < batch; i++) {
        memcpy(bufs + (size_t)i * len, tmpl, len);
        iov[i].iov_base = bufs + (size_t)i * len;
        iov[i].iov_len = len;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    unsigned mid = (unsigned)first_mid;
    long long total = 0;
    double start = now_s();
    while (!*stop) {
        pace(start, total, rate);
        for (int i = 0; i < batch; i++, mid++) {
            unsigned char *b = bufs + (size_t)i * len;
            b[2] = (mid >> 8) & 0xFF;
            b[3] = mid & 0xFF;
            if (tkl >= 2) { b[4] = b[2]; b[5] = b[3]; }
        }
        int off = 0;
        while (off < batch && !*stop) {
            int n = sendmmsg(fd, msgs + off, batch - off, 0);
            if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
                    wait_writable(fd);
                    continue;
                }
                if (errno == ECONNREFUSED || errno == EINTR) continue;
                free(bufs); free(msgs); free(iov);
                return -errno;
            }
            off += n;
            total += n;
            *sent = total;
        }
        mid -= (unsigned)(batch - off);  /* ids of datagrams not sent are used again */
    }
    free(bufs); free(msgs); free(iov);
    return total;
}

/* A byte stream on a connected TCP socket: `buf` (len bytes, whole packets of
 * msg_len bytes each) again and again, each copy in send() calls of as much as the
 * kernel takes.  len == msg_len: one packet per send(), as a device publishing one
 * message at a time; len of 64 KiB: bench/loadgen.py's fan-in. *sent counts whole
 * packets. */
long long blast_tcp(int fd, const unsigned char *buf, int len, int msg_len, double rate,
                    volatile long long *sent, volatile int *stop) {
    long long bytes = 0;
    double start = now_s();
    int per_copy = len / msg_len;
    while (!*stop) {
        pace(start, bytes / msg_len + per_copy - 1, rate);
        int off = 0;
        while (off < len) {
            ssize_t n = send(fd, buf + off, len - off, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    if (*stop) return bytes / msg_len;
                    wait_writable(fd);
                    continue;
                }
                if (errno == EINTR) continue;
                return -errno;
            }
            off += n;
            bytes += n;
            *sent = bytes / msg_len;
        }
    }
    return bytes / msg_len;
}
