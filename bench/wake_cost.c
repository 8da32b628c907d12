/* What one thread waking another costs on this machine, at a given rate.
 *
 * A heartbeat through the daemon wakes three threads in turn (network,
 * core, network); through the bare transport baseline, one. This measures
 * the same pattern without any of the daemon's work: a timer wakes thread
 * A --rate times a second; with --hops 3, A wakes B through an eventfd and
 * B wakes A back, each waiting in epoll_wait as the daemon's threads do
 * (timerfd + eventfds, nothing else). The process's CPU time over the run,
 * divided by the wake-ups, is what a wake-up costs here. --timeout gives
 * every wait a timeout, as event loops with timers do (lws's 1 s tick,
 * libevent's): a sleep then also arms a kernel timer.
 *
 *   proctord_wake_cost --rate 100 --seconds 30 --hops 1
 *   proctord_wake_cost --rate 100 --seconds 30 --hops 3 --timeout 1000
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static int to_b, to_a;
static int timeout_ms = -1;
static volatile int done;

static void wait_one(int epfd)
{
    struct epoll_event ev;

    int n;

    while ((n = epoll_wait(epfd, &ev, 1, timeout_ms)) == 0 ||
           (n < 0 && errno == EINTR))
        if (done)
            return;
}

static int watch(int fd)
{
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};

    if (epfd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        perror("epoll");
        exit(1);
    }
    return epfd;
}

static void *thread_b(void *arg)
{
    int epfd = watch(to_b);
    uint64_t v;

    (void)arg;
    while (!done) {
        wait_one(epfd);
        if (read(to_b, &v, sizeof(v)) != sizeof(v))
            continue;
        v = 1;
        if (write(to_a, &v, sizeof(v)) != sizeof(v))
            perror("write");
    }
    close(epfd);
    return NULL;
}

static double cpu_s(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    double rate = 100, seconds = 30, t0, c0, wall, cpu;
    int hops = 3;
    long ticks = 0;
    pthread_t b;
    int tfd, ep_timer, ep_reply;
    struct itimerspec its;
    uint64_t v;

    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--rate") == 0)
            rate = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--seconds") == 0)
            seconds = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--hops") == 0)
            hops = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--timeout") == 0)
            timeout_ms = atoi(argv[i + 1]);
    }
    if (rate <= 0 || seconds <= 0 || (hops != 1 && hops != 3)) {
        fprintf(stderr, "usage: %s [--rate N] [--seconds S] [--hops 1|3] "
                "[--timeout MS]\n", argv[0]);
        return 2;
    }
    to_b = eventfd(0, EFD_CLOEXEC);
    to_a = eventfd(0, EFD_CLOEXEC);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    if (to_b < 0 || to_a < 0 || tfd < 0) {
        perror("fd");
        return 1;
    }
    ep_timer = watch(tfd);
    ep_reply = watch(to_a);
    if (hops == 3 && pthread_create(&b, NULL, thread_b, NULL) != 0) {
        perror("pthread_create");
        return 1;
    }
    memset(&its, 0, sizeof(its));
    its.it_interval.tv_nsec = (long)(1e9 / rate) % 1000000000L;
    its.it_interval.tv_sec = (time_t)(1 / rate);
    its.it_value = its.it_interval;
    timerfd_settime(tfd, 0, &its, NULL);

    t0 = now_s();
    c0 = cpu_s();
    while (now_s() - t0 < seconds) {
        wait_one(ep_timer);
        if (read(tfd, &v, sizeof(v)) != sizeof(v))
            continue;
        ticks++;
        if (hops == 3) {
            v = 1;
            if (write(to_b, &v, sizeof(v)) != sizeof(v))
                perror("write");
            wait_one(ep_reply);
            if (read(to_a, &v, sizeof(v)) != sizeof(v))
                perror("read");
        }
    }
    cpu = cpu_s() - c0;
    wall = now_s() - t0;
    done = 1;
    if (hops == 3) {
        v = 1;
        if (write(to_b, &v, sizeof(v)) != sizeof(v))
            perror("write");
        pthread_join(b, NULL);
    }
    printf("wake_cost hops=%d timeout=%d rate=%.0f/s rounds=%ld wall=%.1fs "
           "cpu=%.3fs cpu_share=%.2f%% per_round_us=%.1f per_wake_us=%.1f\n",
           hops, timeout_ms, rate, ticks, wall, cpu, 100 * cpu / wall,
           1e6 * cpu / ticks,
           1e6 * cpu / ((double)ticks * hops));
    return 0;
}
