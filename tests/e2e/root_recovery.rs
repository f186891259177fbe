//! An admin without the root key administers; losing the admin laptop that holds the
//! organisation root key: a sealed backup restores
//! it on another admin's device, and nobody else can use it.

use muster_e2e::{apply_roles, relay_certificate, roles_file, with_input, Device, Org};
use std::process::Output;

const PASSPHRASE: &str = "lighthouse keeper at dawn";

fn succeeded(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_sealed_root_backup_lets_another_admin_carry_on_after_the_first_laptop_is_lost() {
    let org = Org::new("root-backup");
    let alice = &org.admin;
    let carol = org.enrol("carol");
    let bob = org.enrol("bob");
    apply_roles(&org, alice, &[("carol", "carol display", "admin")]);
    carol.ok(&["sync"]);
    let refused = carol.fails(&[
        "admin",
        "apply",
        &roles_file(&org, &[("bob", "bob display", "admin")]),
    ]);
    assert!(
        refused.contains("organisation root key"),
        "without the root, carol cannot make an admin: {refused}"
    );
    // Everything else an admin does, carol's device does without the root: it invites
    // and approves erin, revokes her, and applies a provisioning file.
    let code = carol.ok(&["invite", "erin"]).trim().to_string();
    let erin = Device::new(&org.dir, "erin");
    erin.ok(&["join", &code, "--display-name", "Erin E"]);
    carol.ok(&["approve", "erin"]);
    erin.ok(&["sync"]);
    carol.ok(&["admin", "revoke", "erin"]);
    assert!(erin.fails(&["sync"]).contains("revoked"));
    apply_roles(&org, &carol, &[("bob", "Bob Renamed", "member")]);
    let bob_entry = bob.directory_entry("bob");
    assert_eq!(bob_entry["display_name"], "Bob Renamed");

    let backup = org.dir.path().join("root-backup.json");
    let backup_arg = backup.display().to_string();
    let weak = failed(&with_input(
        alice,
        &["admin", "root", "backup", "--out", &backup_arg],
        "short\n",
    ));
    assert!(weak.contains("at least 12 characters"), "{weak}");
    assert!(!backup.exists(), "nothing written for a refused passphrase");
    succeeded(&with_input(
        alice,
        &["admin", "root", "backup", "--out", &backup_arg],
        &format!("{PASSPHRASE}\n"),
    ));
    let sealed = std::fs::read_to_string(&backup).unwrap();
    assert!(sealed.contains("argon2id"), "{sealed}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&backup).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the backup is readable by its owner only");
    }
    let again = failed(&with_input(
        alice,
        &["admin", "root", "backup", "--out", &backup_arg],
        &format!("{PASSPHRASE}\n"),
    ));
    assert!(
        again.contains("cannot create"),
        "an existing file is kept: {again}"
    );

    // The laptop is lost.
    std::fs::remove_dir_all(org.dir.path().join("alice")).unwrap();

    let wrong = failed(&with_input(
        &carol,
        &["admin", "root", "restore", &backup_arg],
        "lighthouse keeper at dusk\n",
    ));
    assert!(wrong.contains("wrong passphrase"), "{wrong}");
    let member = failed(&with_input(
        &bob,
        &["admin", "root", "restore", &backup_arg],
        &format!("{PASSPHRASE}\n"),
    ));
    assert!(member.contains("only an organisation admin"), "{member}");
    let restored = succeeded(&with_input(
        &carol,
        &["admin", "root", "restore", &backup_arg],
        &format!("{PASSPHRASE}\n"),
    ));
    assert!(
        restored.contains("now holds the root key of Acme"),
        "{restored}"
    );

    // Carol enrols a new colleague and makes them an admin, as only the root could.
    let code = carol.ok(&["invite", "dave"]).trim().to_string();
    let dave = Device::new(&org.dir, "dave");
    dave.ok(&["join", &code, "--display-name", "Dave D"]);
    carol.ok(&["approve", "dave"]);
    dave.ok(&["sync"]);
    apply_roles(&org, &carol, &[("dave", "Dave D", "admin")]);
    dave.ok(&["sync"]);
    let dave_entry = bob.directory_entry("dave");
    assert!(
        dave_entry.to_string().contains("admin"),
        "dave is an admin, certified by the restored root: {dave_entry}"
    );
}

#[test]
fn two_of_three_admins_restore_a_split_root_and_one_alone_cannot() {
    let org = Org::new("root-split");
    let alice = &org.admin;
    let admins: Vec<Device> = ["carol", "dave", "erin"]
        .iter()
        .map(|u| org.enrol(u))
        .collect();
    apply_roles(
        &org,
        alice,
        &[
            ("carol", "carol display", "admin"),
            ("dave", "dave display", "admin"),
            ("erin", "erin display", "admin"),
        ],
    );
    for admin in &admins {
        admin.ok(&["sync"]);
    }
    let bob = org.enrol("bob");

    let shares = org.dir.path().join("shares");
    let shares_arg = shares.display().to_string();
    let passphrases = "carol's own passphrase\ndave's own passphrase\nerin's own passphrase\n";
    let not_admins = failed(&with_input(
        alice,
        &[
            "admin",
            "root",
            "split",
            "--threshold",
            "2",
            "--holders",
            "carol,bob",
            "--out-dir",
            &shares_arg,
        ],
        passphrases,
    ));
    assert!(not_admins.contains("bob is not an admin"), "{not_admins}");
    let made = succeeded(&with_input(
        alice,
        &[
            "admin",
            "root",
            "split",
            "--threshold",
            "2",
            "--holders",
            "carol,dave,erin",
            "--out-dir",
            &shares_arg,
        ],
        passphrases,
    ));
    assert!(made.contains("any 2 of the 3 shares"), "{made}");
    let share = |u: &str| {
        shares
            .join(format!("root-share-{u}.json"))
            .display()
            .to_string()
    };

    std::fs::remove_dir_all(org.dir.path().join("alice")).unwrap();
    let carol = &admins[0];
    let alone = failed(&with_input(
        carol,
        &["admin", "root", "restore", &share("carol")],
        "carol's own passphrase\n",
    ));
    assert!(alone.contains("2 are needed"), "{alone}");
    let wrong = failed(&with_input(
        carol,
        &["admin", "root", "restore", &share("carol"), &share("erin")],
        "carol's own passphrase\ndave's own passphrase\n",
    ));
    assert!(wrong.contains("wrong passphrase for share 3"), "{wrong}");
    let no_root = failed(&with_input(
        carol,
        &["admin", "root", "backup", "--out", &share("backup")],
        "a passphrase long enough\n",
    ));
    assert!(
        no_root.contains("does not hold the organisation root key"),
        "nothing was installed by the failed attempts: {no_root}"
    );
    let restored = succeeded(&with_input(
        carol,
        &["admin", "root", "restore", &share("carol"), &share("dave")],
        "carol's own passphrase\ndave's own passphrase\n",
    ));
    assert!(
        restored.contains("now holds the root key of Acme"),
        "{restored}"
    );

    // Carol approves a new admin with the restored root.
    let code = carol.ok(&["invite", "frank"]).trim().to_string();
    let frank = Device::new(&org.dir, "frank");
    frank.ok(&["join", &code, "--display-name", "Frank F"]);
    apply_roles(&org, carol, &[("frank", "Frank F", "admin")]);
    frank.ok(&["sync"]);
    let frank_entry = bob.directory_entry("frank");
    assert!(
        frank_entry.to_string().contains("admin"),
        "frank is an admin: {frank_entry}"
    );
}

#[test]
fn a_restored_root_renews_from_the_lost_holders_record_not_from_what_the_relay_shows() {
    let org = Org::new("root-record");
    let alice = &org.admin;
    // Short certificates, so renewals come within the test.
    alice.ok(&["admin", "policy", "--certificate-lifetime", "45s"]);
    let carol = org.enrol("carol");
    let mallory = org.enrol("mallory");
    let roles = |mallory_role| {
        apply_roles(
            &org,
            alice,
            &[
                ("carol", "carol display", "admin"),
                ("mallory", "mallory display", mallory_role),
            ],
        )
    };
    roles("admin");
    carol.ok(&["sync"]);
    mallory.ok(&["sync"]);
    carol.ok(&["directory"]);
    let as_admin = relay_certificate(&org, "mallory");
    assert!(as_admin.is_admin());

    // Alice demotes mallory; the relay hides that from carol by serving the old certificate.
    roles("member");
    let demoted = relay_certificate(&org, "mallory");
    assert!(!demoted.is_admin());
    muster_e2e::relay_db(&org)
        .execute(
            "UPDATE devices SET certificate = ?1 WHERE user = 'mallory'",
            [as_admin.to_bytes()],
        )
        .unwrap();
    assert!(
        relay_certificate(&org, "mallory").is_admin(),
        "the relay hides the demotion"
    );

    let backup = org.dir.path().join("root-backup.json");
    succeeded(&with_input(
        alice,
        &[
            "admin",
            "root",
            "backup",
            "--out",
            &backup.display().to_string(),
        ],
        &format!("{PASSPHRASE}\n"),
    ));
    std::fs::remove_dir_all(org.dir.path().join("alice")).unwrap();
    succeeded(&with_input(
        &carol,
        &["admin", "root", "restore", &backup.display().to_string()],
        &format!("{PASSPHRASE}\n"),
    ));

    // Carol's device renews mallory's certificate once it is due: as a member, as alice
    // last signed, not as the admin certificate the relay showed.
    muster_e2e::wait_until(
        std::time::Duration::from_secs(90),
        "carol renews mallory's certificate",
        || {
            carol.run(&["sync"]);
            let now = relay_certificate(&org, "mallory");
            now.body.not_after > demoted.body.not_after
                && now.body.not_before >= demoted.body.not_before
        },
    );
    let renewed = relay_certificate(&org, "mallory");
    assert!(
        !renewed.is_admin(),
        "the restored root must not sign mallory back into an admin: {:?}",
        renewed.body.roles
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        renewed.body.not_after <= now + 60,
        "the restored root keeps the organisation's 45 s lifetime from the backup"
    );
}
