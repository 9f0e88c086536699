//! Put, Range and DeleteRange: every option, checked value by value.

use super::*;

pub(crate) async fn put_options(c: &mut Client) {
    let r0 = current_rev(c).await;
    let r = c.put("put/a", "1", None).await.expect("put");
    assert_eq!(header(r.header()).revision(), r0 + 1);
    assert!(r.prev_key().is_none(), "prev_kv only when asked");

    let r = c
        .put("put/a", "2", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put");
    assert_eq!(header(r.header()).revision(), r0 + 2);
    assert_eq!(
        kv(r.prev_key().expect("prev kv")),
        expect("put/a", "1", r0 + 1, r0 + 1, 1)
    );
    let r = c
        .put("put/new", "n", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put");
    assert!(r.prev_key().is_none(), "no prev kv for a new key");
    assert_eq!(header(r.header()).revision(), r0 + 3);
    // An empty value is a value.
    assert_eq!(put(c, "put/empty", "").await, r0 + 4);
    let r = get(c, "put/empty", GetOptions::new()).await;
    assert_eq!(kvs(&r), vec![expect("put/empty", "", r0 + 4, r0 + 4, 1)]);

    // Errors leave the revision alone.
    assert_status(
        c.put("put/a", "x", Some(PutOptions::new().with_lease(0x1234)))
            .await,
        Code::NotFound,
        LEASE_NOT_FOUND,
    );
    assert_status(
        c.put(
            "put/missing",
            "",
            Some(PutOptions::new().with_ignore_value()),
        )
        .await,
        Code::InvalidArgument,
        KEY_NOT_FOUND,
    );
    assert_status(
        c.put(
            "put/missing",
            "v",
            Some(PutOptions::new().with_ignore_lease()),
        )
        .await,
        Code::InvalidArgument,
        KEY_NOT_FOUND,
    );
    assert_status(
        c.put("put/a", "v", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    assert_status(
        c.put(
            "put/a",
            "v",
            Some(PutOptions::new().with_ignore_lease().with_lease(7)),
        )
        .await,
        Code::InvalidArgument,
        "etcdserver: lease is provided",
    );
    assert_status(
        c.put("", "v", None).await,
        Code::InvalidArgument,
        KEY_NOT_PROVIDED,
    );
    assert_status(
        c.put("", "", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        KEY_NOT_PROVIDED,
    );
    assert_eq!(current_rev(c).await, r0 + 4);
    assert!(
        get(c, "put/missing", GetOptions::new())
            .await
            .kvs()
            .is_empty()
    );

    // ignore_value keeps the value and still makes a new version.
    let r = c
        .put(
            "put/a",
            "",
            Some(PutOptions::new().with_ignore_value().with_prev_key()),
        )
        .await
        .expect("put ignore_value");
    assert_eq!(header(r.header()).revision(), r0 + 5);
    assert_eq!(
        kv(r.prev_key().expect("prev kv")),
        expect("put/a", "2", r0 + 1, r0 + 2, 2)
    );
    let r = get(c, "put/a", GetOptions::new()).await;
    assert_eq!(kvs(&r), vec![expect("put/a", "2", r0 + 1, r0 + 5, 3)]);
    // ignore_lease takes the new value and keeps the (absent) lease.
    let r = c
        .put("put/a", "3", Some(PutOptions::new().with_ignore_lease()))
        .await
        .expect("put ignore_lease");
    assert_eq!(header(r.header()).revision(), r0 + 6);
    let r = get(c, "put/a", GetOptions::new()).await;
    assert_eq!(kvs(&r), vec![expect("put/a", "3", r0 + 1, r0 + 6, 4)]);
    // Both at once: a pure touch.
    let r = c
        .put(
            "put/a",
            "",
            Some(PutOptions::new().with_ignore_value().with_ignore_lease()),
        )
        .await
        .expect("put ignore both");
    assert_eq!(header(r.header()).revision(), r0 + 7);
    let r = get(c, "put/a", GetOptions::new()).await;
    assert_eq!(kvs(&r), vec![expect("put/a", "3", r0 + 1, r0 + 7, 5)]);
    // Binary keys and values round-trip.
    let key = vec![b'p', 0, 0xff, b'\n'];
    let value = vec![0u8, 1, 2, 0xfe, 0xff];
    c.put(key.clone(), value.clone(), None).await.expect("put");
    let r = c.get(key.clone(), None).await.expect("get");
    assert_eq!(r.kvs()[0].key(), key.as_slice());
    assert_eq!(r.kvs()[0].value(), value.as_slice());
}

pub(crate) async fn get_options(c: &mut Client) {
    let r0 = current_rev(c).await;
    for (k, v) in [
        ("zz/a", "5"),
        ("zz/b", "4"),
        ("zz/c", "3"),
        ("zz/d", "2"),
        ("zz/e", "1"),
    ] {
        put(c, k, v).await;
    }
    put(c, "zz/b", "44").await; // r0 + 6
    put(c, "zz/d", "22").await; // r0 + 7
    put(c, "zz/d", "222").await; // r0 + 8
    // Neighbours just outside the "zz/" prefix on both sides.
    put(c, "zy", "x").await; // r0 + 9
    put(c, "zz0", "x").await; // r0 + 10
    let now = r0 + 10;
    let a = expect("zz/a", "5", r0 + 1, r0 + 1, 1);
    let b = expect("zz/b", "44", r0 + 2, r0 + 6, 2);
    let cc = expect("zz/c", "3", r0 + 3, r0 + 3, 1);
    let d = expect("zz/d", "222", r0 + 4, r0 + 8, 3);
    let e = expect("zz/e", "1", r0 + 5, r0 + 5, 1);
    let zz0 = expect("zz0", "x", r0 + 10, r0 + 10, 1);
    let all = vec![a.clone(), b.clone(), cc.clone(), d.clone(), e.clone()];

    // One key, a missing key.
    let r = get(c, "zz/a", GetOptions::new()).await;
    assert_eq!(kvs(&r), vec![a.clone()]);
    assert_eq!((r.count(), r.more()), (1, false));
    assert_eq!(header(r.header()).revision(), now);
    let r = get(c, "zz/nope", GetOptions::new()).await;
    assert!(r.kvs().is_empty());
    assert_eq!((r.count(), r.more()), (0, false));

    // Ranges: [key, end), prefix, from key, an end before the key.
    let r = get(c, "zz/b", GetOptions::new().with_range("zz/d")).await;
    assert_eq!(kvs(&r), vec![b.clone(), cc.clone()]);
    assert_eq!(r.count(), 2);
    let r = get(c, "zz/", GetOptions::new().with_prefix()).await;
    assert_eq!(kvs(&r), all);
    assert_eq!((r.count(), r.more()), (5, false));
    let r = get(c, "zz/c", GetOptions::new().with_from_key()).await;
    assert_eq!(kvs(&r), vec![cc.clone(), d.clone(), e.clone(), zz0.clone()]);
    let r = get(c, "zz/d", GetOptions::new().with_range("zz/b")).await;
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 0);

    // Limit, more, count.
    let r = get(c, "zz/", GetOptions::new().with_prefix().with_limit(2)).await;
    assert_eq!(kvs(&r), vec![a.clone(), b.clone()]);
    assert_eq!((r.count(), r.more()), (5, true));
    let r = get(c, "zz/", GetOptions::new().with_prefix().with_limit(4)).await;
    assert_eq!(keys(&r), ["zz/a", "zz/b", "zz/c", "zz/d"]);
    assert_eq!((r.count(), r.more()), (5, true));
    for limit in [5, 6, 0] {
        let r = get(c, "zz/", GetOptions::new().with_prefix().with_limit(limit)).await;
        assert_eq!(kvs(&r), all, "limit {limit}");
        assert_eq!((r.count(), r.more()), (5, false), "limit {limit}");
    }

    // count_only, keys_only.
    let r = get(c, "zz/", GetOptions::new().with_prefix().with_count_only()).await;
    assert!(r.kvs().is_empty());
    assert_eq!((r.count(), r.more()), (5, false));
    assert_eq!(header(r.header()).revision(), now);
    let r = get(c, "zz/", GetOptions::new().with_prefix().with_keys_only()).await;
    let stripped: Vec<Kv> = all
        .iter()
        .map(|(k, _, cr, m, v, l)| (k.clone(), String::new(), *cr, *m, *v, *l))
        .collect();
    assert_eq!(kvs(&r), stripped);
    assert_eq!(r.count(), 5);
    let r = get(
        c,
        "zz/",
        GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_limit(1),
    )
    .await;
    assert_eq!(kvs(&r), vec![stripped[0].clone()]);
    assert_eq!((r.count(), r.more()), (5, true));

    // Reads at an old revision; the header still carries the current revision.
    let r = get(
        c,
        "zz/",
        GetOptions::new().with_prefix().with_revision(r0 + 3),
    )
    .await;
    assert_eq!(
        kvs(&r),
        vec![
            expect("zz/a", "5", r0 + 1, r0 + 1, 1),
            expect("zz/b", "4", r0 + 2, r0 + 2, 1),
            expect("zz/c", "3", r0 + 3, r0 + 3, 1),
        ]
    );
    assert_eq!(r.count(), 3);
    assert_eq!(header(r.header()).revision(), now);
    let r = get(c, "zz/d", GetOptions::new().with_revision(r0 + 7)).await;
    assert_eq!(kvs(&r), vec![expect("zz/d", "22", r0 + 4, r0 + 7, 2)]);
    assert_eq!(header(r.header()).revision(), now);
    let r = get(c, "zz/a", GetOptions::new().with_revision(r0)).await;
    assert!(r.kvs().is_empty(), "zz/a did not exist yet");
    let r = get(c, "zz/a", GetOptions::new().with_revision(now)).await;
    assert_eq!(kvs(&r), vec![a.clone()]);
    assert_status(
        c.get("zz/a", Some(GetOptions::new().with_revision(now + 1)))
            .await,
        Code::OutOfRange,
        FUTURE_REV,
    );
    assert_status(
        c.get("zz/a", Some(GetOptions::new().with_revision(now + 1000)))
            .await,
        Code::OutOfRange,
        FUTURE_REV,
    );

    // Sorting. Values: a=5 b=44 c=3 d=222 e=1; versions a1 b2 c1 d3 e1;
    // mod revisions a<c<e<b<d; create revisions a<b<c<d<e.
    let sorted = |t: SortTarget, o: SortOrder| GetOptions::new().with_prefix().with_sort(t, o);
    let r = get(c, "zz/", sorted(SortTarget::Key, SortOrder::Descend)).await;
    assert_eq!(keys(&r), ["zz/e", "zz/d", "zz/c", "zz/b", "zz/a"]);
    let r = get(c, "zz/", sorted(SortTarget::Key, SortOrder::Ascend)).await;
    assert_eq!(keys(&r), ["zz/a", "zz/b", "zz/c", "zz/d", "zz/e"]);
    let r = get(c, "zz/", sorted(SortTarget::Value, SortOrder::Ascend)).await;
    assert_eq!(keys(&r), ["zz/e", "zz/d", "zz/c", "zz/b", "zz/a"]);
    let r = get(c, "zz/", sorted(SortTarget::Value, SortOrder::Descend)).await;
    assert_eq!(keys(&r), ["zz/a", "zz/b", "zz/c", "zz/d", "zz/e"]);
    let r = get(c, "zz/", sorted(SortTarget::Version, SortOrder::Ascend)).await;
    let versions: Vec<i64> = r.kvs().iter().map(|k| k.version()).collect();
    assert_eq!(versions, [1, 1, 1, 2, 3]);
    assert_eq!(keys(&r)[3..], ["zz/b", "zz/d"]);
    let r = get(c, "zz/", sorted(SortTarget::Version, SortOrder::Descend)).await;
    assert_eq!(keys(&r)[..2], ["zz/d", "zz/b"]);
    let r = get(c, "zz/", sorted(SortTarget::Create, SortOrder::Descend)).await;
    assert_eq!(keys(&r), ["zz/e", "zz/d", "zz/c", "zz/b", "zz/a"]);
    let r = get(c, "zz/", sorted(SortTarget::Create, SortOrder::Ascend)).await;
    assert_eq!(keys(&r), ["zz/a", "zz/b", "zz/c", "zz/d", "zz/e"]);
    let r = get(c, "zz/", sorted(SortTarget::Mod, SortOrder::Ascend)).await;
    assert_eq!(keys(&r), ["zz/a", "zz/c", "zz/e", "zz/b", "zz/d"]);
    let r = get(c, "zz/", sorted(SortTarget::Mod, SortOrder::Descend)).await;
    assert_eq!(keys(&r), ["zz/d", "zz/b", "zz/e", "zz/c", "zz/a"]);
    // A target other than the key with no order sorts ascending.
    let r = get(c, "zz/", sorted(SortTarget::Mod, SortOrder::None)).await;
    assert_eq!(keys(&r), ["zz/a", "zz/c", "zz/e", "zz/b", "zz/d"]);
    // Sorting comes before the limit.
    let r = get(
        c,
        "zz/",
        sorted(SortTarget::Mod, SortOrder::Descend).with_limit(2),
    )
    .await;
    assert_eq!(kvs(&r), vec![d.clone(), b.clone()]);
    assert_eq!((r.count(), r.more()), (5, true));
    let r = get(
        c,
        "zz/",
        sorted(SortTarget::Value, SortOrder::Ascend).with_limit(1),
    )
    .await;
    assert_eq!(kvs(&r), vec![e.clone()]);
    assert_eq!((r.count(), r.more()), (5, true));

    // Revision filters; count is the range's count before filtering.
    let with = |o: GetOptions| o.with_prefix();
    let r = get(
        c,
        "zz/",
        with(GetOptions::new().with_min_mod_revision(r0 + 5)),
    )
    .await;
    assert_eq!(kvs(&r), vec![b.clone(), d.clone(), e.clone()]);
    assert_eq!((r.count(), r.more()), (5, false));
    let r = get(
        c,
        "zz/",
        with(GetOptions::new().with_max_mod_revision(r0 + 4)),
    )
    .await;
    assert_eq!(kvs(&r), vec![a.clone(), cc.clone()]);
    assert_eq!(r.count(), 5);
    let r = get(
        c,
        "zz/",
        with(GetOptions::new().with_min_create_revision(r0 + 3)),
    )
    .await;
    assert_eq!(kvs(&r), vec![cc.clone(), d.clone(), e.clone()]);
    assert_eq!(r.count(), 5);
    let r = get(
        c,
        "zz/",
        with(GetOptions::new().with_max_create_revision(r0 + 2)),
    )
    .await;
    assert_eq!(kvs(&r), vec![a.clone(), b.clone()]);
    assert_eq!(r.count(), 5);
    let r = get(
        c,
        "zz/",
        with(
            GetOptions::new()
                .with_min_mod_revision(r0 + 3)
                .with_max_mod_revision(r0 + 6)
                .with_min_create_revision(r0 + 2),
        ),
    )
    .await;
    assert_eq!(kvs(&r), vec![b.clone(), cc.clone(), e.clone()]);
    // Filters come before the limit.
    let r = get(
        c,
        "zz/",
        with(
            GetOptions::new()
                .with_min_mod_revision(r0 + 5)
                .with_limit(1),
        ),
    )
    .await;
    assert_eq!(kvs(&r), vec![b.clone()]);
    assert_eq!((r.count(), r.more()), (5, true));
    let r = get(
        c,
        "zz/",
        with(
            GetOptions::new()
                .with_min_mod_revision(r0 + 5)
                .with_limit(3),
        ),
    )
    .await;
    assert_eq!(kvs(&r), vec![b.clone(), d.clone(), e.clone()]);
    assert_eq!((r.count(), r.more()), (5, false));

    // Serializable reads see the same.
    let r = get(
        c,
        "zz/",
        GetOptions::new().with_prefix().with_serializable(),
    )
    .await;
    assert_eq!(kvs(&r), all);
    assert_eq!(header(r.header()).revision(), now);
    let r = get(
        c,
        "zz/",
        GetOptions::new()
            .with_prefix()
            .with_serializable()
            .with_revision(r0 + 3),
    )
    .await;
    assert_eq!(keys(&r), ["zz/a", "zz/b", "zz/c"]);

    // An empty key is refused, with or without a range end.
    assert_status(
        c.get("", None).await,
        Code::InvalidArgument,
        KEY_NOT_PROVIDED,
    );
    assert_status(
        c.get("", Some(GetOptions::new().with_range("zz/b"))).await,
        Code::InvalidArgument,
        KEY_NOT_PROVIDED,
    );
    assert_eq!(current_rev(c).await, now, "reads do not move the revision");
}

pub(crate) async fn delete_options(c: &mut Client) {
    let r0 = current_rev(c).await;
    for k in ["del/a", "del/b", "del/c", "del/d", "del/e", "del/f"] {
        put(c, k, &format!("v-{k}")).await;
    }
    // r0+1 .. r0+6
    let r = c.delete("del/a", None).await.expect("delete");
    assert_eq!(r.deleted(), 1);
    assert!(r.prev_kvs().is_empty(), "prev_kvs only when asked");
    assert_eq!(header(r.header()).revision(), r0 + 7);
    // Deleting nothing changes nothing.
    let r = c.delete("del/a", None).await.expect("delete");
    assert_eq!(r.deleted(), 0);
    assert_eq!(header(r.header()).revision(), r0 + 7);
    let r = c
        .delete("del/zzz", Some(DeleteOptions::new().with_prev_key()))
        .await
        .expect("delete");
    assert_eq!(r.deleted(), 0);
    assert!(r.prev_kvs().is_empty());
    assert_eq!(header(r.header()).revision(), r0 + 7);

    // A range with prev_kv.
    let r = c
        .delete(
            "del/b",
            Some(DeleteOptions::new().with_range("del/d").with_prev_key()),
        )
        .await
        .expect("delete range");
    assert_eq!(r.deleted(), 2);
    let prev: Vec<Kv> = r.prev_kvs().iter().map(kv).collect();
    assert_eq!(
        prev,
        vec![
            expect("del/b", "v-del/b", r0 + 2, r0 + 2, 1),
            expect("del/c", "v-del/c", r0 + 3, r0 + 3, 1),
        ]
    );
    assert_eq!(header(r.header()).revision(), r0 + 8);
    let r = get(c, "del/", GetOptions::new().with_prefix()).await;
    assert_eq!(keys(&r), ["del/d", "del/e", "del/f"]);

    // The deleted keys are still there at older revisions.
    let r = get(
        c,
        "del/",
        GetOptions::new().with_prefix().with_revision(r0 + 7),
    )
    .await;
    assert_eq!(keys(&r), ["del/b", "del/c", "del/d", "del/e", "del/f"]);

    // A prefix, without prev_kv.
    put(c, "del/e/x", "x").await; // r0 + 9
    let r = c
        .delete("del/e", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete prefix");
    assert_eq!(r.deleted(), 2);
    assert!(r.prev_kvs().is_empty());
    assert_eq!(header(r.header()).revision(), r0 + 10);
    let r = get(c, "del/", GetOptions::new().with_prefix()).await;
    assert_eq!(keys(&r), ["del/d", "del/f"]);

    // A key created again starts over at version 1.
    assert_eq!(put(c, "del/a", "again").await, r0 + 11);
    let r = get(c, "del/a", GetOptions::new()).await;
    assert_eq!(kvs(&r), vec![expect("del/a", "again", r0 + 11, r0 + 11, 1)]);

    // An empty key is refused.
    assert_status(
        c.delete("", None).await,
        Code::InvalidArgument,
        KEY_NOT_PROVIDED,
    );
    assert_status(
        c.delete("", Some(DeleteOptions::new().with_range("z")))
            .await,
        Code::InvalidArgument,
        KEY_NOT_PROVIDED,
    );
    assert_eq!(current_rev(c).await, r0 + 11);
}
