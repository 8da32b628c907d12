/* The bounded queue: order, refusal when full (never growth), wake-up
 * hints, wrap-around, and many producers against one consumer. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "queue.h"

struct item {
    uint32_t producer;
    uint32_t n;
};

static void test_fifo_and_full(void **state)
{
    struct queue q;
    struct item in, out[8];
    int was_empty = -1;

    (void)state;
    assert_int_equal(queue_init(&q, 4, sizeof(struct item)), QUEUE_OK);
    for (uint32_t i = 0; i < 4; i++) {
        in.producer = 0;
        in.n = i;
        assert_int_equal(queue_push(&q, &in, &was_empty), QUEUE_OK);
        assert_int_equal(was_empty, i == 0);
    }
    assert_int_equal(queue_push(&q, &in, NULL), QUEUE_FULL);
    assert_int_equal(q.refused, 1);
    assert_int_equal(queue_depth(&q), 4);

    assert_int_equal(queue_pop_many(&q, out, 3), 3);
    for (uint32_t i = 0; i < 3; i++)
        assert_int_equal(out[i].n, i);
    assert_int_equal(queue_pop_many(&q, out, 8), 1);
    assert_int_equal(out[0].n, 3);
    assert_int_equal(queue_pop_many(&q, out, 8), 0);
    queue_cleanup(&q);
}

static void test_wraps_around(void **state)
{
    struct queue q;
    struct item in = {0, 0}, out;
    uint32_t expect = 0;

    (void)state;
    assert_int_equal(queue_init(&q, 3, sizeof(struct item)), QUEUE_OK);
    for (int round = 0; round < 100; round++) {
        in.n = (uint32_t)(2 * round);
        assert_int_equal(queue_push(&q, &in, NULL), QUEUE_OK);
        in.n++;
        assert_int_equal(queue_push(&q, &in, NULL), QUEUE_OK);
        for (int k = 0; k < 2; k++) {
            assert_int_equal(queue_pop_many(&q, &out, 1), 1);
            assert_int_equal(out.n, expect++);
        }
    }
    queue_cleanup(&q);
}

static void test_bad_init(void **state)
{
    struct queue q;

    (void)state;
    assert_int_equal(queue_init(&q, 0, 8), QUEUE_ERR);
    assert_int_equal(queue_init(&q, 8, 0), QUEUE_ERR);
}

#define PRODUCERS 4
#define PER_PRODUCER 20000

struct producer_arg {
    struct queue *q;
    uint32_t id;
};

static void *produce(void *arg)
{
    struct producer_arg *p = arg;
    struct item in = {p->id, 0};

    while (in.n < PER_PRODUCER) {
        if (queue_push(p->q, &in, NULL) == QUEUE_OK)
            in.n++;
    }
    return NULL;
}

static void test_producers_keep_order(void **state)
{
    struct queue q;
    pthread_t threads[PRODUCERS];
    struct producer_arg args[PRODUCERS];
    uint32_t next[PRODUCERS] = {0};
    struct item out[64];
    size_t total = 0;

    (void)state;
    assert_int_equal(queue_init(&q, 128, sizeof(struct item)), QUEUE_OK);
    for (uint32_t i = 0; i < PRODUCERS; i++) {
        args[i].q = &q;
        args[i].id = i;
        pthread_create(&threads[i], NULL, produce, &args[i]);
    }

    /* Each producer's items arrive in its order, none lost or doubled. */
    while (total < (size_t)PRODUCERS * PER_PRODUCER) {
        size_t n = queue_pop_many(&q, out, 64);
        for (size_t k = 0; k < n; k++) {
            assert_true(out[k].producer < PRODUCERS);
            assert_int_equal(out[k].n, next[out[k].producer]);
            next[out[k].producer]++;
        }
        total += n;
    }
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(threads[i], NULL);
    assert_int_equal(queue_depth(&q), 0);
    assert_true(q.pushed == (uint64_t)PRODUCERS * PER_PRODUCER);
    queue_cleanup(&q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fifo_and_full),
        cmocka_unit_test(test_wraps_around),
        cmocka_unit_test(test_bad_init),
        cmocka_unit_test(test_producers_keep_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
