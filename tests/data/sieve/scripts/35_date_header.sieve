require ["date", "imap4flags", "relational"];
if date :originalzone :is "date" "year" "2026" { addflag "y2026"; }
if date :zone "+0000" :value "ge" "date" "hour" "12" { addflag "afternoon"; }
if date :originalzone :is "date" "weekday" "1" { addflag "monday"; }
