"""FolderBalance, the pure share arithmetic behind the replicas' folders (incoming/balance.py).
The end-to-end behaviour with real replicas is in tests/test_replicas_balance_e2e.py."""

from __future__ import annotations

from postroom.incoming.balance import BEYOND_SHARE_AFTER, FolderBalance


def test_a_replica_that_counts_no_other_yet_takes_one_while_the_count_settles():
    alone = FolderBalance(6, me="r1", members=["r1"], settled=False)
    assert alone.may_take()
    alone.held.add("f1")
    assert not alone.may_take()  # more replicas may be starting: no more than one yet


def test_a_replica_that_counts_others_at_start_takes_its_share_at_once():
    balance = FolderBalance(6, me="r3", members=["r1", "r2", "r3"], settled=False)
    balance.held.add("f1")
    assert balance.may_take()  # its share of three is two, settled or not
    balance.held.add("f2")
    assert not balance.may_take()


def test_a_free_folder_is_taken_past_the_share_after_a_replica_left_and_kept_while_the_count_stays():
    balance = FolderBalance(6, me="r1", members=["r1", "r2", "r3"], settled=True, beyond_hold=60)
    balance.held.update({"f1", "f2"})
    balance.members(["r1", "r2"])  # r3 stopped cleanly; r2 may be dead, still counted
    balance.held.add("f3")
    assert not balance.may_take()
    assert not balance.may_take_beyond(BEYOND_SHARE_AFTER / 2)  # a live replica may take it yet
    assert balance.may_take_beyond(BEYOND_SHARE_AFTER)
    balance.held.add("f4")
    balance.took_beyond()
    assert not balance.should_hand_over("f4")  # the replicas alive are the same: kept
    balance.beyond_hold = 0  # a lease later, still the same replicas: the usual shares again
    assert balance.should_hand_over("f4")


def test_no_folder_is_taken_past_the_share_after_a_replica_joined():
    balance = FolderBalance(6, me="r1", members=["r1", "r2"], settled=True)
    balance.members(["r1", "r2", "r3"])  # r3 starting: the free folders are its share
    balance.held.update({"f1", "f2"})
    assert not balance.may_take()
    assert not balance.may_take_beyond(10 * BEYOND_SHARE_AFTER)
