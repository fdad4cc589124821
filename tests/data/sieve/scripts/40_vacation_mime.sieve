require "vacation";
if not header :contains "subject" "ALERT" {
  vacation :mime :days 2 text:
Content-Type: text/plain; charset=us-ascii

Away until Monday.
.
;
}
