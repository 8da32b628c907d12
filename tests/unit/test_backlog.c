/* The commit buffer: entries own binary-safe copies of their arguments,
 * order is kept across wrap-around and put-backs, and both bounds
 * (entries, bytes) refuse rather than grow. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "backlog.h"

static struct backlog_entry *numbered(int n)
{
    char num[16];
    const char *argv[2] = {"SET", num};

    snprintf(num, sizeof(num), "%d", n);
    return backlog_entry_new(-1, 0, 2, argv, NULL);
}

static int number(const struct backlog_entry *e)
{
    int n = -1;

    sscanf(e->argv[1], "%d", &n);
    return n;
}

static void test_copies_are_owned_and_binary_safe(void **state)
{
    char key[] = "pd:{l}:evidence:x";
    const unsigned char jpeg[] = {0xff, 0xd8, 0x00, 0xff, 0xd9};
    const char *argv[2] = {key, (const char *)jpeg};
    size_t lens[2] = {strlen(key), sizeof(jpeg)};
    struct backlog_entry *e;

    (void)state;
    e = backlog_entry_new(3, 1, 2, argv, lens);
    assert_non_null(e);
    key[0] = 'X';
    assert_string_equal(e->argv[0], "pd:{l}:evidence:x");
    assert_int_equal(e->lens[1], sizeof(jpeg));
    assert_memory_equal(e->argv[1], jpeg, sizeof(jpeg));
    assert_int_equal(e->script, 3);
    assert_int_equal(e->nkeys, 1);
    assert_true(e->bytes >= sizeof(*e) + sizeof(jpeg) + strlen(key));
    backlog_entry_free(e);
    assert_null(backlog_entry_new(-1, 0, 0, argv, NULL));
}

static void test_order_wrap_and_unpop(void **state)
{
    struct backlog b;
    struct backlog_entry *e;

    (void)state;
    assert_int_equal(backlog_init(&b, 3, BACKLOG_MAX_BYTES), BACKLOG_OK);
    for (int round = 0; round < 5; round++) {
        for (int i = 0; i < 3; i++)
            assert_int_equal(backlog_push(&b, numbered(10 * round + i)),
                             BACKLOG_OK);
        e = numbered(99);
        assert_int_equal(backlog_push(&b, e), BACKLOG_FULL);
        backlog_entry_free(e);

        /* A write that could not be sent goes back in front. */
        e = backlog_pop(&b);
        assert_int_equal(number(e), 10 * round);
        assert_int_equal(backlog_unpop(&b, e), BACKLOG_OK);
        for (int i = 0; i < 3; i++) {
            e = backlog_pop(&b);
            assert_int_equal(number(e), 10 * round + i);
            backlog_entry_free(e);
        }
        assert_null(backlog_pop(&b));
        assert_int_equal(b.bytes, 0);
    }
    backlog_free(&b);
}

static void test_byte_bound(void **state)
{
    struct backlog b;
    struct backlog_entry *one = numbered(1), *two = numbered(2);

    (void)state;
    assert_int_equal(backlog_init(&b, 100, one->bytes + one->bytes / 2),
                     BACKLOG_OK);
    assert_true(backlog_room(&b, 1, one->bytes));
    assert_int_equal(backlog_push(&b, one), BACKLOG_OK);
    assert_false(backlog_room(&b, 1, two->bytes));
    assert_int_equal(backlog_push(&b, two), BACKLOG_FULL);
    assert_int_equal(b.depth, 1);
    backlog_entry_free(two);
    backlog_free(&b);
}

static void test_zero_entries_refuses_everything(void **state)
{
    struct backlog b;
    struct backlog_entry *e = numbered(1);

    (void)state;
    assert_int_equal(backlog_init(&b, 0, BACKLOG_MAX_BYTES), BACKLOG_OK);
    assert_false(backlog_room(&b, 1, 0));
    assert_int_equal(backlog_push(&b, e), BACKLOG_FULL);
    assert_int_equal(backlog_unpop(&b, e), BACKLOG_FULL);
    assert_null(backlog_pop(&b));
    backlog_entry_free(e);
    backlog_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_copies_are_owned_and_binary_safe),
        cmocka_unit_test(test_order_wrap_and_unpop),
        cmocka_unit_test(test_byte_bound),
        cmocka_unit_test(test_zero_entries_refuses_everything),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
