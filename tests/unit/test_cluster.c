/* Redis Cluster routing: CRC16 and hash tags (values as redis-server's
 * CLUSTER KEYSLOT gives them), key positions, RESP splitting, the slot
 * map of a CLUSTER SLOTS reply and redirection errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "cluster.h"

static int slot_of(const char *key)
{
    return cluster_key_slot(key, strlen(key));
}

static void test_crc16_vector(void **state)
{
    (void)state;
    assert_int_equal(cluster_crc16("123456789", 9), 0x31C3);
    assert_int_equal(cluster_crc16("", 0), 0);
}

static void test_hash_tags(void **state)
{
    (void)state;
    assert_int_equal(slot_of("foo"), 12182);
    assert_int_equal(slot_of("bar"), 5061);
    assert_int_equal(slot_of("pd:events"), 8259);
    /* Every key of a learner lands in the slot of the learner id. */
    assert_int_equal(slot_of("pd:{alice}:stream"), 749);
    assert_int_equal(slot_of("alice"), 749);
    assert_int_equal(slot_of("pd:{alice}:course:c1"), 749);
    /* An empty tag hashes the whole key; only the first tag counts. */
    assert_int_equal(slot_of("{}foo"), 9500);
    assert_int_equal(slot_of("foo{}{bar}"), 8363);
    assert_int_equal(slot_of("foo{{bar}}zap"), 4015);
    assert_int_equal(slot_of("foo{bar}{zap}"), 5061);
    /* An unclosed brace is no tag. */
    assert_int_equal(slot_of("foo{bar"), cluster_key_slot("foo{bar", 7));
    assert_int_not_equal(slot_of("foo{bar"), 5061);
}

static int key_of(int argc, const char *const *argv)
{
    size_t lens[8];

    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    return cluster_command_key(argc, argv, lens);
}

static void test_command_key(void **state)
{
    const char *get[] = {"GET", "pd:sid:x"};
    const char *ping[] = {"PING"};
    const char *pub[] = {"publish", "pd:takeover", "m"};
    const char *eval[] = {"EVALSHA", "abc", "2", "pd:{a}:x", "pd:{a}:y"};
    const char *eval0[] = {"EVAL", "return 1", "0", "arg"};
    const char *load[] = {"SCRIPT", "LOAD", "return 1"};

    (void)state;
    assert_int_equal(key_of(2, get), 1);
    assert_int_equal(key_of(1, ping), -1);
    assert_int_equal(key_of(3, pub), -1);
    assert_int_equal(key_of(5, eval), 3);
    assert_int_equal(key_of(4, eval0), -1);
    assert_int_equal(key_of(3, load), -1);
}

static void test_resp_args(void **state)
{
    const char cmd[] = "*3\r\n$3\r\nSET\r\n$5\r\npd:{a\r\n$0\r\n\r\n";
    const char *argv[4];
    size_t lens[4];

    (void)state;
    assert_int_equal(cluster_resp_args(cmd, sizeof(cmd) - 1, argv, lens, 4),
                     3);
    assert_int_equal(lens[0], 3);
    assert_memory_equal(argv[1], "pd:{a", 5);
    assert_int_equal(lens[2], 0);
    /* Too many arguments, a short buffer, trailing bytes. */
    assert_int_equal(cluster_resp_args(cmd, sizeof(cmd) - 1, argv, lens, 2),
                     -1);
    assert_int_equal(cluster_resp_args(cmd, sizeof(cmd) - 4, argv, lens, 4),
                     -1);
    assert_int_equal(cluster_resp_args("*1\r\n$1\r\nx\r\nzz", 13, argv,
                                       lens, 4), -1);
    assert_int_equal(cluster_resp_args("*1\r\n$9\r\nx\r\n", 11, argv,
                                       lens, 4), -1);
}

/* Parses a RESP reply with hiredis's own reader. */
static redisReply *read_reply(const char *resp)
{
    redisReader *r = redisReaderCreate();
    void *reply = NULL;

    assert_non_null(r);
    assert_int_equal(redisReaderFeed(r, resp, strlen(resp)), REDIS_OK);
    assert_int_equal(redisReaderGetReply(r, &reply), REDIS_OK);
    redisReaderFree(r);
    assert_non_null(reply);
    return reply;
}

static void test_parse_slots(void **state)
{
    struct cluster_range ranges[4];
    redisReply *r = read_reply(
        "*2\r\n"
        "*4\r\n:0\r\n:5460\r\n"
        "*3\r\n$9\r\n127.0.0.1\r\n:7001\r\n$2\r\nid\r\n"
        "*3\r\n$9\r\n127.0.0.1\r\n:7004\r\n$2\r\nr1\r\n"
        "*3\r\n:5461\r\n:16383\r\n"
        "*2\r\n$9\r\n127.0.0.2\r\n:7002\r\n");

    (void)state;
    assert_int_equal(cluster_parse_slots(r, ranges, 4), 2);
    assert_int_equal(ranges[0].from, 0);
    assert_int_equal(ranges[0].to, 5460);
    assert_string_equal(ranges[0].host, "127.0.0.1");
    assert_int_equal(ranges[0].port, 7001);
    assert_int_equal(ranges[1].from, 5461);
    assert_int_equal(ranges[1].to, 16383);
    assert_string_equal(ranges[1].host, "127.0.0.2");
    assert_int_equal(ranges[1].port, 7002);
    assert_int_equal(cluster_parse_slots(r, ranges, 1), -1);
    freeReplyObject(r);

    r = read_reply("*1\r\n*3\r\n:9\r\n:3\r\n*2\r\n$1\r\nh\r\n:1\r\n");
    assert_int_equal(cluster_parse_slots(r, ranges, 4), -1);
    freeReplyObject(r);
    r = read_reply("-ERR This instance has cluster support disabled\r\n");
    assert_int_equal(cluster_parse_slots(r, ranges, 4), -1);
    freeReplyObject(r);
}

static enum cluster_redirect redirect(const char *err, int *slot,
                                      char *host, int *port)
{
    return cluster_parse_redirect(err, strlen(err), slot, host,
                                  CLUSTER_HOSTLEN, port);
}

static void test_redirects(void **state)
{
    char host[CLUSTER_HOSTLEN];
    int slot = -1, port = -1;

    (void)state;
    assert_int_equal(redirect("MOVED 3999 127.0.0.1:6381", &slot, host,
                              &port), CLUSTER_MOVED);
    assert_int_equal(slot, 3999);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 6381);
    assert_int_equal(redirect("ASK 12 ::1:7000", &slot, host, &port),
                     CLUSTER_ASK);
    assert_int_equal(slot, 12);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 7000);
    assert_int_equal(redirect("TRYAGAIN Multiple keys request during "
                              "rehashing of slot", &slot, host, &port),
                     CLUSTER_RETRY);
    assert_int_equal(redirect("CLUSTERDOWN The cluster is down", &slot,
                              host, &port), CLUSTER_RETRY);
    assert_int_equal(redirect("NOSCRIPT No matching script", &slot, host,
                              &port), CLUSTER_NONE);
    assert_int_equal(redirect("ASKING", &slot, host, &port), CLUSTER_NONE);
    assert_int_equal(redirect("MOVED 16384 h:1", &slot, host, &port),
                     CLUSTER_NONE);
    assert_int_equal(redirect("MOVED 1 h:0", &slot, host, &port),
                     CLUSTER_NONE);
    assert_int_equal(redirect("MOVED 1 nocolon", &slot, host, &port),
                     CLUSTER_NONE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc16_vector),
        cmocka_unit_test(test_hash_tags),
        cmocka_unit_test(test_command_key),
        cmocka_unit_test(test_resp_args),
        cmocka_unit_test(test_parse_slots),
        cmocka_unit_test(test_redirects),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
