require "vacation";
vacation :addresses ["bbb@zzz.org", "accounts@example.test", "ppp@zzz.org"] :subject "Out of office" "Away.";
