if anyof (header :contains "subject" "sale", header :contains "subject" "GTUBE") { discard; stop; }
