require ["date", "imap4flags", "regex"];
if currentdate :zone "+0000" :matches "year" "2*" { addflag "thismillennium"; }
if currentdate :zone "+0100" :regex "date" "^[0-9]{4}-[0-9]{2}-[0-9]{2}$" { addflag "dated"; }
